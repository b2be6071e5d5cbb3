package topo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InNS runs fn on an OS thread switched into the named namespace. Sockets
// fn creates stay in that namespace after it returns. If the thread cannot
// be switched back, it is retired (never reused by other goroutines).
func InNS(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("getting the current namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening namespace %s: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", name, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(fnErr, fmt.Errorf("returning from namespace %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Reply is what an echo server answers: who it is and the source address
// it saw.
type Reply struct {
	Server string
	Seen   netip.AddrPort
	// Peer is whom the client's socket says it is connected to
	// (getpeername; IPv4-mapped addresses unmapped). Set by Dial.
	Peer netip.AddrPort
}

// String returns "server (saw addr:port)".
func (r Reply) String() string { return fmt.Sprintf("%s (saw %s)", r.Server, r.Seen) }

// ParseReply reads an echo server's answer ("name addr:port", surrounding
// space ignored).
func ParseReply(s string) (Reply, error) {
	s = strings.TrimSpace(s)
	f := strings.Fields(s)
	if len(f) != 2 {
		return Reply{}, fmt.Errorf("malformed reply %q", s)
	}
	ap, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return Reply{}, fmt.Errorf("malformed reply %q: %w", s, err)
	}
	return Reply{Server: f[0], Seen: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// ServeCopy serves TCP on port in h's namespace, sending back whatever a
// connection sends until it is closed (for long-lived and bulk
// connections). stop closes the listener.
func ServeCopy(h *Host, port uint16) (stop func(), err error) {
	var l net.Listener
	if err := InNS(h.NS, func() (err error) {
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		return nil, fmt.Errorf("starting a copy server in %s: %w", h.Name, err)
	}
	go serveEach(l, func(c net.Conn) { _, _ = io.Copy(c, c) })
	return func() { l.Close() }, nil
}

// EchoServer answers every TCP connection and UDP datagram with its name
// and the peer address it saw.
type EchoServer struct {
	name  string
	tcp   []net.Listener
	udp   []net.PacketConn
	wg    sync.WaitGroup
	close sync.Once
}

// ServeEcho starts TCP and UDP echo servers on port (all addresses, both
// families) inside h's namespace.
func ServeEcho(h *Host, name string, port uint16) (*EchoServer, error) {
	s := &EchoServer{name: name}
	err := InNS(h.NS, func() error {
		addr := fmt.Sprintf(":%d", port)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		s.tcp = append(s.tcp, l)
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		s.udp = append(s.udp, pc)
		return nil
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("starting echo server %s in %s: %w", name, h.Name, err)
	}
	for _, l := range s.tcp {
		s.wg.Add(1)
		go s.serveTCP(l)
	}
	for _, pc := range s.udp {
		s.wg.Add(1)
		go s.serveUDP(pc)
	}
	return s, nil
}

func (s *EchoServer) serveTCP(l net.Listener) {
	defer s.wg.Done()
	serveEach(l, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s %s\n", s.name, c.RemoteAddr())
	})
}

// serveEach accepts connections on l until it is closed, and runs handle
// for each in a goroutine of its own, closing the connection after.
func serveEach(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

func (s *EchoServer) serveUDP(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", s.name, from)), from)
	}
}

// Close stops the server.
func (s *EchoServer) Close() {
	s.close.Do(func() {
		for _, l := range s.tcp {
			l.Close()
		}
		for _, pc := range s.udp {
			pc.Close()
		}
	})
	s.wg.Wait()
}

// Dial connects from h to dst over network, and returns the echo server's
// reply. network is "tcp" or "udp", or one of two other ways clients make
// TCP connections to an IPv4 address: "tcp4in6", an IPv6 socket connecting
// to the IPv4-mapped address ::ffff:a.b.c.d (what Java does by default),
// and "mptcp", a Multipath TCP socket. A refused connection (TCP reset, ICMP
// port unreachable) returns an error wrapping syscall.ECONNREFUSED; silence
// returns a timeout error.
func Dial(ctx context.Context, h *Host, network string, dst netip.AddrPort, timeout time.Duration) (Reply, error) {
	var conn net.Conn
	if err := InNS(h.NS, func() error {
		var err error
		conn, err = dial(ctx, network, dst, timeout)
		return err
	}); err != nil {
		return Reply{}, err
	}
	return exchange(conn, network, timeout)
}

// DialFrom is Dial over TCP with the source address src, one of h's.
func DialFrom(ctx context.Context, h *Host, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (Reply, error) {
	var conn net.Conn
	if err := InNS(h.NS, func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		var err error
		conn, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	}); err != nil {
		return Reply{}, err
	}
	return exchange(conn, "tcp", timeout)
}

// exchange reads an echo server's reply on conn (sending a datagram first
// over UDP) and closes conn.
func exchange(conn net.Conn, network string, timeout time.Duration) (Reply, error) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := conn.Write([]byte("hello\n")); err != nil {
			return Reply{}, err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return Reply{}, err
	}
	r, err := ParseReply(line)
	if err != nil {
		return Reply{}, err
	}
	if peer, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil {
		r.Peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	}
	return r, nil
}

// dial makes the connection Dial describes, in the current namespace.
func dial(ctx context.Context, network string, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	switch network {
	case "tcp", "udp":
		return d.DialContext(ctx, network, dst.String())
	case "mptcp":
		d.SetMultipathTCP(true)
		c, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return nil, err
		}
		// Go falls back to plain TCP where the kernel has no MPTCP (or
		// the peer does not answer with it): that would test nothing.
		if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
			c.Close()
			return nil, fmt.Errorf("mptcp dial to %s: the connection is not Multipath TCP (%v)", dst, err)
		}
		return c, nil
	case "tcp4in6":
		if !dst.Addr().Is4() {
			return nil, fmt.Errorf("tcp4in6 dial to %s: not an IPv4 address", dst)
		}
		return dialMapped(dst, timeout)
	}
	return nil, fmt.Errorf("dial to %s: unknown network %q", dst, network)
}

// dialMapped connects an IPv6 TCP socket to the IPv4-mapped form of dst
// (Go's net package never does: it dials IPv4 addresses with IPv4 sockets).
func dialMapped(dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tcp4in6 dial to %s: %w", dst, err)
	}
	f := os.NewFile(uintptr(fd), "tcp4in6")
	defer f.Close()
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := errors.Join(
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv), // bounds connect()
	); err != nil {
		return nil, fmt.Errorf("tcp4in6 dial to %s: %w", dst, err)
	}
	sa := &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()} // ::ffff:a.b.c.d
	if err := unix.Connect(fd, sa); err != nil {
		if errors.Is(err, unix.EINPROGRESS) || errors.Is(err, unix.EAGAIN) {
			err = fmt.Errorf("%w: %w", os.ErrDeadlineExceeded, err)
		}
		return nil, fmt.Errorf("tcp4in6 dial to %s: %w", dst, err)
	}
	return net.FileConn(f)
}

// UDPFlow is a long-lived UDP "connection" (one source port) that sends a
// datagram per Ping, like a client that keeps its socket open.
type UDPFlow struct {
	conn net.Conn
}

// OpenUDPFlow opens a UDP socket in h connected to dst.
func OpenUDPFlow(h *Host, dst netip.AddrPort) (*UDPFlow, error) {
	var conn net.Conn
	if err := InNS(h.NS, func() error {
		var err error
		conn, err = net.Dial("udp", dst.String())
		return err
	}); err != nil {
		return nil, err
	}
	return &UDPFlow{conn: conn}, nil
}

// Ping sends one datagram and waits up to timeout for the reply.
func (f *UDPFlow) Ping(timeout time.Duration) (Reply, error) {
	_ = f.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := f.conn.Write([]byte("ping\n")); err != nil {
		return Reply{}, err
	}
	buf := make([]byte, 512)
	n, err := f.conn.Read(buf)
	if err != nil {
		return Reply{}, err
	}
	return ParseReply(string(buf[:n]))
}

// Close closes the socket.
func (f *UDPFlow) Close() error { return f.conn.Close() }

// HTTPGet fetches url from inside h's namespace and returns the status
// code, the response headers and the body.
func HTTPGet(ctx context.Context, h *Host, url string) (int, http.Header, string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := InNS(h.NS, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, string(b), err
}

// Listen opens a TCP listener on addr (e.g. ":8080") inside h's namespace.
func Listen(h *Host, addr string) (net.Listener, error) {
	var l net.Listener
	err := InNS(h.NS, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s in %s: %w", addr, h.Name, err)
	}
	return l, nil
}

// ServeStream listens on port in h and, on each connection, answers every
// line with "<name> <line>" until the peer closes: a server for
// long-lived connections (see OpenStream). The listener is the caller's
// to close.
func ServeStream(h *Host, name string, port uint16) (net.Listener, error) {
	l, err := Listen(h, fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	go serveEach(l, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(c, "%s %s", name, line); err != nil {
				return
			}
		}
	})
	return l, nil
}

// Stream is a long-lived TCP connection to a ServeStream server.
type Stream struct {
	conn net.Conn
	r    *bufio.Reader
}

// OpenStream connects from h to dst.
func OpenStream(from *Host, dst netip.AddrPort) (*Stream, error) {
	var conn net.Conn
	if err := InNS(from.NS, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", dst.String(), 2*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	return &Stream{conn: conn, r: bufio.NewReader(conn)}, nil
}

// Ping sends a line and returns the name of the server that echoed it,
// within 2 s.
func (s *Stream) Ping(msg string) (string, error) {
	_ = s.conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(s.conn, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := s.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	server, echoed, _ := strings.Cut(strings.TrimSpace(line), " ")
	if echoed != msg {
		return "", fmt.Errorf("echoed %q, want %q", echoed, msg)
	}
	return server, nil
}

// Close closes the connection.
func (s *Stream) Close() error { return s.conn.Close() }

// Meet makes host h resolve the link-layer address of each of addrs, its
// neighbours, the way traffic would: a UDP datagram to the discard port,
// then it waits until h's neighbour table holds them all (as a node's
// table holds its pods once kubelet's probes or routed replies reached
// them). It fails when one is not resolved before ctx ends.
func Meet(ctx context.Context, h *Host, addrs []netip.Addr) error {
	return InNS(h.NS, func() error {
		for _, a := range addrs {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
			if err != nil {
				return fmt.Errorf("%s to %s: %w", h.Name, a, err)
			}
			_, _ = c.Write([]byte{0})
			c.Close()
		}
		for {
			neighs, err := netlink.NeighList(0, 0)
			if err != nil {
				return fmt.Errorf("listing %s's neighbours: %w", h.Name, err)
			}
			missing := slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool {
				return slices.ContainsFunc(neighs, func(n netlink.Neigh) bool {
					ip, _ := netip.AddrFromSlice(n.IP)
					return ip.Unmap() == a && len(n.HardwareAddr) > 0
				})
			})
			if len(missing) == 0 {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s did not resolve %v: %w", h.Name, missing, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
}
