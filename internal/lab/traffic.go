package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/kubenat/kubenat/internal/topo"
)

// Answer is what a server said it saw.
type Answer struct {
	// Server is the pod (or "internet") that answered.
	Server string `json:"server"`
	// Node is the pod's node ("" for the internet host).
	Node string `json:"node,omitempty"`
	// Seen is the source address and port the server saw.
	Seen netip.AddrPort `json:"seen"`
	// Local is the address the server was reached at (empty for UDP).
	Local netip.AddrPort `json:"local,omitzero"`
}

// serveHTTP starts an HTTP server on port (all addresses) inside h that
// answers every request with a JSON Answer. It returns its stop function.
func serveHTTP(h *topo.Host, name, node string, port uint16) (func(), error) {
	l, err := topo.Listen(h, fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, fmt.Errorf("starting the HTTP server of %s: %w", name, err)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a := Answer{Server: name, Node: node}
			a.Seen, _ = netip.ParseAddrPort(r.RemoteAddr)
			if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
				a.Local, _ = netip.ParseAddrPort(la.String())
			}
			a.Seen = unmap(a.Seen)
			a.Local = unmap(a.Local)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(a)
		}),
	}
	go func() { _ = srv.Serve(l) }()
	return func() { _ = srv.Close() }, nil
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// conn is an open client connection and what came back on it. It stays
// open until Close, so the conntrack entries can be read meanwhile.
type conn struct {
	c      net.Conn
	Src    netip.AddrPort
	Answer Answer
}

func (c *conn) Close() {
	if c.c != nil {
		c.c.Close()
	}
}

// httpGet sends GET / to dst from h and reads the JSON Answer.
func httpGet(ctx context.Context, h *Host, dst netip.AddrPort, timeout time.Duration) (*conn, error) {
	nc, err := dial(ctx, h, "tcp", dst, timeout)
	if err != nil {
		return nil, err
	}
	c := &conn{c: nc, Src: unmap(netip.MustParseAddrPort(nc.LocalAddr().String()))}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(nc, "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: kubenat-lab\r\n\r\n", dst); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the HTTP response: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	if err := json.Unmarshal(body, &c.Answer); err != nil {
		c.Close()
		return nil, fmt.Errorf("decoding the answer %q: %w", body, err)
	}
	return c, nil
}

// udpEcho sends a datagram to dst from h and reads the echo server's
// "name addr:port" reply.
func udpEcho(ctx context.Context, h *Host, dst netip.AddrPort, timeout time.Duration) (*conn, error) {
	nc, err := dial(ctx, h, "udp", dst, timeout)
	if err != nil {
		return nil, err
	}
	c := &conn{c: nc, Src: unmap(netip.MustParseAddrPort(nc.LocalAddr().String()))}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	if _, err := nc.Write([]byte("hello from the kubenat lab\n")); err != nil {
		c.Close()
		return nil, err
	}
	buf := make([]byte, 512)
	n, err := nc.Read(buf)
	if err != nil {
		c.Close()
		return nil, err
	}
	f := strings.Fields(string(buf[:n]))
	if len(f) != 2 {
		c.Close()
		return nil, fmt.Errorf("malformed UDP reply %q", buf[:n])
	}
	seen, err := netip.ParseAddrPort(f[1])
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("malformed UDP reply %q", buf[:n])
	}
	c.Answer = Answer{Server: f[0], Seen: unmap(seen)}
	return c, nil
}

// dial connects from inside h's namespace.
func dial(ctx context.Context, h *Host, network string, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var nc net.Conn
	d := net.Dialer{Timeout: timeout}
	err := topo.InNS(h.NS, func() error {
		var err error
		nc, err = d.DialContext(ctx, network, dst.String())
		return err
	})
	return nc, err
}

// probe GETs url from h (a health check) and returns the status and body;
// status 0 means no answer.
func probe(ctx context.Context, h *Host, node, url string) HealthProbe {
	p := HealthProbe{Node: node, URL: url}
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return dial(ctx, h, network, ap, time.Second)
		},
	}
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return p
	}
	resp, err := client.Do(req)
	if err != nil {
		return p
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	p.Status, p.Body = resp.StatusCode, strings.TrimSpace(string(b))
	return p
}
