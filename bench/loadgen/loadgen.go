// Package loadgen is the benchmark's traffic: TCP servers that accept and
// drop connections, a client loop that opens and resets connections as fast
// as one thread can and records each connect latency, and a bulk transfer
// for throughput. Everything runs inside network namespaces (topo.InNS).
//
// The connect loop uses raw blocking syscalls on one locked OS thread:
// socket, connect (the latency is the SYN → SYN-ACK round trip as the
// client sees it), then close with SO_LINGER 0, which sends a reset. The
// reset leaves no TIME_WAIT socket behind, so a loop never runs out of
// source ports, and conntrack entries only linger in the short CLOSE state.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubenat/kubenat/internal/topo"
)

// Acceptor accepts TCP connections and closes them at once, in a tight
// loop of raw blocking accept4/close calls on one OS thread, so that a
// connect loop never waits for the server. It serves the connect loops.
type Acceptor struct {
	fd   int
	done chan struct{}
	once sync.Once
}

// ServeAcceptClose starts an Acceptor on port (all IPv4 addresses) inside
// h's namespace, with a listen backlog of 65535 (capped by the namespace's
// net.core.somaxconn).
func ServeAcceptClose(h *topo.Host, port uint16) (*Acceptor, error) {
	a := &Acceptor{fd: -1, done: make(chan struct{})}
	err := topo.InNS(h.NS, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		a.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(port)}); err != nil {
			return err
		}
		return unix.Listen(fd, 65535)
	})
	if err != nil {
		if a.fd >= 0 {
			unix.Close(a.fd)
		}
		return nil, fmt.Errorf("starting an acceptor on port %d in %s: %w", port, h.Name, err)
	}
	go func() {
		defer close(a.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for {
			nfd, _, err := unix.Accept4(a.fd, unix.SOCK_CLOEXEC)
			switch {
			case err == nil:
				unix.Close(nfd)
			case err == unix.EINTR || err == unix.ECONNABORTED || err == unix.EAGAIN:
			default:
				return // shut down (EINVAL) or broken
			}
		}
	}()
	return a, nil
}

// Close stops the Acceptor: shutdown wakes the blocked accept.
func (a *Acceptor) Close() {
	a.once.Do(func() {
		_ = unix.Shutdown(a.fd, unix.SHUT_RDWR)
		<-a.done
		unix.Close(a.fd)
	})
}

// Server reads and discards everything each connection sends (the bulk
// transfer's receiver).
type Server struct {
	ln   net.Listener
	wg   sync.WaitGroup
	once sync.Once
}

// Serve starts a discarding server on port (all addresses) inside h's namespace.
func Serve(h *topo.Host, port uint16) (*Server, error) {
	s := &Server{}
	err := topo.InNS(h.NS, func() error {
		lc := net.ListenConfig{}
		var err error
		s.ln, err = lc.Listen(context.Background(), "tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("starting a server on port %d in %s: %w", port, h.Name, err)
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. a connection reset before it was accepted
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			// Discard what the peer sends until it closes or resets: a
			// connect-loop client resets at once, a bulk sender streams.
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}

// Close stops the server and waits for its connections to end.
func (s *Server) Close() {
	s.once.Do(func() { s.ln.Close() })
	s.wg.Wait()
}

// ConnectResult is what one connect loop measured.
type ConnectResult struct {
	// Connections is the number of successful connects.
	Connections int
	// Errors is the number of failed connects; FirstError describes the
	// first of them.
	Errors     int
	FirstError string
	// Elapsed is the measured duration.
	Elapsed time.Duration
	// Latencies are the connect latencies of the successful connects,
	// sorted ascending.
	Latencies []time.Duration
	// Slow counts connects that took longer than 100 ms (a lost SYN costs
	// a 1 s retransmission: a few of them change the rate, not the p99).
	Slow int
}

// Rate returns successful connections per second.
func (r ConnectResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Connections) / r.Elapsed.Seconds()
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of the connect
// latency by the nearest-rank method; 0 when nothing succeeded.
func (r ConnectResult) Percentile(p float64) time.Duration {
	return Percentile(r.Latencies, p)
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of sorted values by
// the nearest-rank method, 0 for an empty slice.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// ConnectLoop opens and resets TCP connections from h, one at a time, for
// d (after warmup, whose connections are not counted), each to a
// destination picked uniformly at random among dsts (as a Service's load
// balancing picks an endpoint; no pick when there is one). It stops early
// when ctx ends or when more than half of the attempts fail (a broken
// path, not a slow one). Errors name the first destination.
func ConnectLoop(ctx context.Context, h *topo.Host, dsts []netip.AddrPort, warmup, d time.Duration) (ConnectResult, error) {
	if len(dsts) == 0 {
		return ConnectResult{}, errors.New("connect loop: no destination")
	}
	sas := make([]*unix.SockaddrInet4, len(dsts))
	for i, dst := range dsts {
		if !dst.Addr().Is4() {
			return ConnectResult{}, fmt.Errorf("connect loop to %s: only IPv4 is supported", dst)
		}
		sas[i] = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	}
	dst := dsts[0]
	var res ConnectResult
	err := topo.InNS(h.NS, func() error {
		lat := make([]time.Duration, 0, 1<<16)
		attempt := func() (time.Duration, error) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return 0, fmt.Errorf("socket: %w", err)
			}
			defer unix.Close(fd)
			// Reset on close: no TIME_WAIT.
			if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
				return 0, fmt.Errorf("SO_LINGER: %w", err)
			}
			// A blocking connect gives up after the send timeout.
			tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
				return 0, fmt.Errorf("SO_SNDTIMEO: %w", err)
			}
			sa := sas[0]
			if len(sas) > 1 {
				sa = sas[rand.IntN(len(sas))]
			}
			t0 := time.Now()
			for {
				err = unix.Connect(fd, sa)
				if err != unix.EINTR {
					break
				}
			}
			l := time.Since(t0)
			if err != nil {
				return 0, err
			}
			return l, nil
		}
		run := func(d time.Duration, record bool) error {
			start := time.Now()
			end := start.Add(d)
			for n := 0; ; n++ {
				if n%64 == 0 {
					if err := ctx.Err(); err != nil {
						return err
					}
					if time.Now().After(end) {
						break
					}
				}
				l, err := attempt()
				if !record {
					continue
				}
				if err != nil {
					if res.Errors == 0 {
						res.FirstError = err.Error()
					}
					res.Errors++
					if res.Errors > 20 && res.Errors > len(lat) {
						break
					}
					continue
				}
				lat = append(lat, l)
			}
			if record {
				res.Elapsed = time.Since(start)
			}
			return nil
		}
		if err := run(warmup, false); err != nil {
			return err
		}
		if err := run(d, true); err != nil {
			return err
		}
		slices.Sort(lat)
		res.Latencies = lat
		for i := len(lat) - 1; i >= 0 && lat[i] > 100*time.Millisecond; i-- {
			res.Slow++
		}
		res.Connections = len(lat)
		return nil
	})
	if err != nil {
		return ConnectResult{}, fmt.Errorf("connect loop %s -> %s: %w", h.Name, dst, err)
	}
	if res.Connections == 0 {
		return res, fmt.Errorf("connect loop %s -> %s: no connection succeeded: %s", h.Name, dst, res.FirstError)
	}
	return res, nil
}

// Throughput sends bytes over one TCP connection from h to dst for d
// (after warmup) and returns the rate in bytes per second the sender
// achieved. The server at dst must discard what it reads (Serve does).
func Throughput(ctx context.Context, h *topo.Host, dst netip.AddrPort, warmup, d time.Duration) (float64, error) {
	var conn net.Conn
	if err := topo.InNS(h.NS, func() error {
		var err error
		dl := net.Dialer{Timeout: 5 * time.Second}
		conn, err = dl.DialContext(ctx, "tcp4", dst.String())
		return err
	}); err != nil {
		return 0, fmt.Errorf("throughput %s -> %s: %w", h.Name, dst, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 256<<10)
	send := func(d time.Duration) (int64, error) {
		var n int64
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			w, err := conn.Write(buf)
			n += int64(w)
			if err != nil {
				if ctx.Err() != nil {
					return n, ctx.Err()
				}
				return n, err
			}
		}
		return n, nil
	}
	if _, err := send(warmup); err != nil {
		return 0, fmt.Errorf("throughput %s -> %s: %w", h.Name, dst, err)
	}
	t0 := time.Now()
	n, err := send(d)
	if err != nil {
		return 0, fmt.Errorf("throughput %s -> %s: %w", h.Name, dst, err)
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}
