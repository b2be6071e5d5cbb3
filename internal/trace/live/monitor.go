package live

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Event is one line of nftables tracing for a traced packet, as `nft
// monitor` prints it.
type Event struct {
	// ID is the trace id the kernel gave the packet.
	ID     string `json:"-"`
	Family string `json:"family"`
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	// Kind is "packet" (the packet entering a base chain), "rule" (a rule
	// that matched), "policy" (the base chain's policy) or "verdict".
	Kind string `json:"kind"`
	// Rule is the matched rule's text, or the packet's description for
	// "packet" events.
	Rule string `json:"rule,omitempty"`
	// Handle is the rule handle when nft could not name the rule (it was
	// added after the monitor started); resolveRules fills Rule in.
	Handle int `json:"-"`
	// Verdict is the rule's or policy's verdict, e.g. "accept", "continue",
	// "jump filter-services", "drop".
	Verdict string `json:"verdict,omitempty"`
}

var (
	traceRE   = regexp.MustCompile(`^trace id ([0-9a-f]+) (\S+) (\S+) (\S+) (.*)$`)
	verdictRE = regexp.MustCompile(`^(.*) \(verdict ([^)]*)\)\s*$`)
	unknownRE = regexp.MustCompile(`^unknown rule handle (\d+)$`)
)

// parseEvent parses one `nft monitor` line; ok is false for lines that are
// not trace events (ruleset changes, comments).
func parseEvent(line string) (Event, bool) {
	m := traceRE.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		return Event{}, false
	}
	e := Event{ID: m[1], Family: m[2], Table: m[3], Chain: m[4]}
	rest := strings.TrimSpace(m[5])
	switch {
	case strings.HasPrefix(rest, "packet: "):
		e.Kind, e.Rule = "packet", strings.TrimPrefix(rest, "packet: ")
	case strings.HasPrefix(rest, "rule "):
		e.Kind = "rule"
		body := strings.TrimPrefix(rest, "rule ")
		if v := verdictRE.FindStringSubmatch(body); v != nil {
			body, e.Verdict = v[1], v[2]
		}
		e.Rule = body
	case strings.HasPrefix(rest, "unknown rule handle "):
		e.Kind = "rule"
		body := rest
		if v := verdictRE.FindStringSubmatch(body); v != nil {
			body, e.Verdict = v[1], v[2]
		}
		if u := unknownRE.FindStringSubmatch(body); u != nil {
			e.Handle, _ = strconv.Atoi(u[1])
		}
		e.Rule = body
	case strings.HasPrefix(rest, "policy "):
		e.Kind, e.Verdict = "policy", strings.TrimPrefix(rest, "policy ")
	case strings.HasPrefix(rest, "verdict "):
		e.Kind, e.Verdict = "verdict", strings.TrimPrefix(rest, "verdict ")
	default:
		e.Kind, e.Rule = "other", rest
	}
	return e, true
}

// packetFields extracts addresses and ports from a "packet" event's
// description ("iif "eth0" ... ip saddr A ip daddr B ... tcp sport P tcp
// dport Q ...").
type packetFields struct {
	IIF, OIF         string
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	// IPID is the IPv4 identification field, -1 when absent (IPv6).
	IPID int
}

func parsePacket(desc string) packetFields {
	p := packetFields{IPID: -1}
	f := strings.Fields(desc)
	for i := 0; i+1 < len(f); i++ {
		v := f[i+1]
		switch f[i] {
		case "iif":
			p.IIF = strings.Trim(v, `"`)
		case "oif":
			p.OIF = strings.Trim(v, `"`)
		case "saddr":
			if i > 0 && (f[i-1] == "ip" || f[i-1] == "ip6") {
				p.Src, _ = netip.ParseAddr(v)
			}
		case "daddr":
			if i > 0 && (f[i-1] == "ip" || f[i-1] == "ip6") {
				p.Dst, _ = netip.ParseAddr(v)
			}
		case "id":
			if i > 0 && f[i-1] == "ip" {
				if n, err := strconv.Atoi(v); err == nil {
					p.IPID = n
				}
			}
		case "sport":
			if n, err := strconv.ParseUint(v, 10, 16); err == nil {
				p.SrcPort = uint16(n)
			}
		case "dport":
			if n, err := strconv.ParseUint(v, 10, 16); err == nil {
				p.DstPort = uint16(n)
			}
		}
	}
	return p
}

// monitor runs `nft monitor` and delivers its lines.
type monitor struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	mu    sync.Mutex
	err   error
}

// startMonitor starts `nft monitor` (ruleset and trace events) in the
// calling process's network namespace.
func startMonitor(ctx context.Context, nftPath string) (*monitor, error) {
	cmd := exec.CommandContext(ctx, nftPath, "monitor")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("starting nft monitor: %w", err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting nft monitor: %w", err)
	}
	m := &monitor{cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		m.read(out)
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			m.mu.Lock()
			m.err = fmt.Errorf("nft monitor exited: %w: %s", err, strings.TrimSpace(stderr.String()))
			m.mu.Unlock()
		}
	}()
	return m, nil
}

func (m *monitor) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		select {
		case m.lines <- sc.Text():
		default:
			// A flood of unrelated events: drop rather than block nft.
		}
	}
	close(m.lines)
}

// stop ends nft monitor and waits for it.
func (m *monitor) stop() {
	if m.cmd.Process != nil {
		_ = m.cmd.Process.Kill()
	}
	<-m.done
}

// failure returns why nft monitor stopped early, if it did.
func (m *monitor) failure() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}
