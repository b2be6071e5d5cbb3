// Package apiservertest runs a real kube-apiserver backed by a real etcd for
// tests, so that control-plane code is exercised against genuine ClusterIP
// and NodePort allocation, validation, and watch/resourceVersion semantics
// rather than client-go fakes.
//
// The binaries are built from the Go module proxy by
// scripts/build-apiserver.sh (pinned by the tools/apiserver module) and
// cached outside the checkout. Start looks for them in this order:
//
//   - Options.BinDir, then $KUBENAT_APISERVER_BIN_DIR: used as is; missing
//     binaries there are an error.
//   - ${KUBENAT_TOOLS_CACHE:-$HOME/.cache/kubenat}/k8s-v1.37.2/bin.
//
// When the cache is empty, Start runs the build script (~7 min cold) if
// $KUBENAT_APISERVER_BUILD is 1/true, or if it is unset and CI=true. Otherwise
// it skips the test with instructions; in CI (CI=true) it never skips and
// returns an error instead, so the test fails.
//
// Each Server is independent: its own temporary directory, free 127.0.0.1
// ports, token and keys. Nothing is shared between Servers or kept in
// package state, so tests may run several in parallel (each costs ~300 MB
// of memory).
package apiservertest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubenat/kubenat/internal/topo"
)

// DefaultServiceClusterIPRange is the --service-cluster-ip-range used when
// Options.ServiceClusterIPRange is empty.
const DefaultServiceClusterIPRange = "10.96.0.0/16"

const (
	// defaultReadyTimeout bounds Start and Restart when ctx has no deadline.
	defaultReadyTimeout = 2 * time.Minute
	// apiserverGrace and etcdGrace are how long a SIGTERMed process may take
	// to shut down before it is SIGKILLed.
	apiserverGrace = 15 * time.Second
	etcdGrace      = 5 * time.Second
	// startAttempts bounds retries when a chosen port was taken by someone
	// else between choosing it and the child binding it.
	startAttempts = 5
	// logTailLines is how much of each log is shown on failure.
	logTailLines = 40
	// kubeconfigName names the cluster, user and context in the kubeconfig.
	kubeconfigName = "apiservertest"
)

// Options configure Start. The zero value is valid.
type Options struct {
	// BinDir is a directory holding kube-apiserver and etcd. Empty means
	// $KUBENAT_APISERVER_BIN_DIR, then the build cache (see the package doc).
	BinDir string

	// ServiceClusterIPRange is kube-apiserver's --service-cluster-ip-range:
	// one CIDR, or two of different families separated by a comma for dual
	// stack. Each must be a network address (no host bits set). Empty means
	// DefaultServiceClusterIPRange.
	ServiceClusterIPRange string

	// ExtraAPIServerArgs are appended to kube-apiserver's command line after
	// the defaults, so a repeated flag (e.g. --service-node-port-range=...)
	// overrides the default value.
	ExtraAPIServerArgs []string

	// AuthorizationMode is kube-apiserver's --authorization-mode. Empty
	// means AlwaysAllow; "RBAC" enforces roles (the test's token stays in
	// system:masters, which may do everything, including impersonating a
	// ServiceAccount to check its permissions).
	AuthorizationMode string

	// NetNS, when set, names a network namespace (under /run/netns, e.g. a
	// topo host's) that etcd and kube-apiserver run in instead of the test
	// process's own: then processes in other namespaces of a test topology
	// (an agent on a node) can reach the API over that topology, and
	// nothing listens in the caller's namespace. etcd listens on 127.0.0.1
	// inside NetNS; kube-apiserver on Address. The test process's clients
	// (RESTConfig, the readiness probes) open their connections inside
	// NetNS. Entering a namespace needs root.
	NetNS string
	// Address is kube-apiserver's bind and advertise address, which its
	// self-signed certificate and the kubeconfig name. The zero value means
	// 127.0.0.1. With NetNS, give an address of that namespace that the
	// other processes can route to.
	Address netip.Addr
}

// Server is a running etcd and kube-apiserver pair. Its methods are safe for
// concurrent use. Start returns it; Stop (or the test's cleanup) ends it.
type Server struct {
	// Set during Start and never changed afterwards.
	tb           testing.TB // nil when started outside a test
	binDir       string
	dir          string // temporary root: logs, etcd data, certs, kubeconfig
	token        string
	serviceCIDRs []netip.Prefix
	extraArgs    []string
	authzMode    string
	netns        string     // network namespace of the processes; "" = ours
	addr         netip.Addr // kube-apiserver's bind and advertise address
	etcdURL      string
	apiPort      int
	host         string // https://<addr>:<apiPort>
	caData       []byte // PEM: the apiserver's self-signed serving chain

	mu        sync.Mutex // guards the fields below and serialises Stop/Restart
	etcd      *process
	apiserver *process
	stopped   bool
}

// Start starts etcd and kube-apiserver and waits until /readyz reports ready
// and the "default" and "kube-system" namespaces exist.
//
// ctx bounds only the start-up, including a build of the binaries if one
// is needed (a cold build takes minutes: give ctx room, and `go test` a
// -timeout above its 10-minute default). When ctx has no deadline, waiting
// for readiness is limited to two minutes; the build is not. The processes
// themselves live until Stop, whatever happens to ctx. tb may be nil (e.g. in benchmarks
// run by a main program); then no cleanup is registered, the caller must call
// Stop, and missing binaries are an error instead of a skip.
//
// With a non-nil tb, Start registers Stop with tb.Cleanup, and may call
// tb.Skip when the binaries are missing outside CI (see the package doc).
// On error every process started so far has been stopped, the temporary
// directory removed, and the error carries the tail of the relevant log.
//
// The apiserver listens on https://127.0.0.1:<free port> (or
// Options.Address, in Options.NetNS) with a self-signed serving certificate (generated by kube-apiserver into its
// --cert-dir), authenticates a random bearer token in group system:masters,
// authorizes everything (AlwaysAllow), signs service-account tokens with a
// freshly generated ECDSA key, and runs without the endpoint reconciler
// (the "kubernetes" Service has no endpoints) and without the ServiceAccount
// admission plugin (Pods can be created without a controller-manager).
// Child processes are killed if the test process dies.
func Start(ctx context.Context, tb testing.TB, opts Options) (*Server, error) {
	if tb != nil {
		tb.Helper()
	}
	cidrs, err := parseServiceCIDRs(opts.ServiceClusterIPRange)
	if err != nil {
		return nil, err
	}
	binDir, err := locateBinaries(ctx, tb, opts.BinDir)
	if err != nil {
		return nil, fmt.Errorf("apiservertest: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultReadyTimeout)
		defer cancel()
	}

	dir, err := os.MkdirTemp("", "kubenat-apiserver-")
	if err != nil {
		return nil, fmt.Errorf("apiservertest: create temporary directory: %w", err)
	}
	s := &Server{
		tb:           tb,
		binDir:       binDir,
		dir:          dir,
		serviceCIDRs: cidrs,
		extraArgs:    append([]string(nil), opts.ExtraAPIServerArgs...),
		authzMode:    opts.AuthorizationMode,
		netns:        opts.NetNS,
		addr:         opts.Address,
	}
	if s.authzMode == "" {
		s.authzMode = "AlwaysAllow"
	}
	if !s.addr.IsValid() {
		s.addr = netip.MustParseAddr("127.0.0.1")
	}
	if err := s.start(ctx); err != nil {
		stopErr := s.Stop()
		return nil, fmt.Errorf("apiservertest: %w", errors.Join(err, stopErr))
	}
	if tb != nil {
		tb.Cleanup(func() {
			if err := s.Stop(); err != nil {
				tb.Errorf("apiservertest: stop: %v", err)
			}
		})
	}
	return s, nil
}

// start prepares credentials, starts etcd and the apiserver, and writes the
// kubeconfig. The caller stops s on error.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	token, err := writeTokenFile(filepath.Join(s.dir, "tokens.csv"))
	if err != nil {
		return err
	}
	s.token = token
	if err := writeServiceAccountKey(filepath.Join(s.dir, "sa.key")); err != nil {
		return err
	}
	if err := s.startEtcd(ctx); err != nil {
		return err
	}
	if err := s.startAPIServer(ctx, true); err != nil {
		return err
	}
	return s.writeKubeconfig()
}

// parseServiceCIDRs validates a --service-cluster-ip-range value.
func parseServiceCIDRs(v string) ([]netip.Prefix, error) {
	if v == "" {
		v = DefaultServiceClusterIPRange
	}
	parts := strings.Split(v, ",")
	if len(parts) > 2 {
		return nil, fmt.Errorf("apiservertest: service cluster IP range %q: at most two CIDRs", v)
	}
	var out []netip.Prefix
	for _, part := range parts {
		p, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("apiservertest: service cluster IP range %q: %w", v, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("apiservertest: service cluster IP range %q: %s has host bits set (want %s)", v, p, p.Masked())
		}
		out = append(out, p)
	}
	if len(out) == 2 && out[0].Addr().Is4() == out[1].Addr().Is4() {
		return nil, fmt.Errorf("apiservertest: service cluster IP range %q: dual stack needs one IPv4 and one IPv6 CIDR", v)
	}
	return out, nil
}

// startEtcd starts etcd on free loopback ports with a data directory in the
// temporary root and waits until it reports healthy. fsync is disabled: the
// data only has to outlive apiserver restarts, not machine crashes.
func (s *Server) startEtcd(ctx context.Context) error {
	dataDir := filepath.Join(s.dir, "etcd")
	logPath := filepath.Join(s.dir, "etcd.log")
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		ports, err := s.freePorts(2)
		if err != nil {
			return err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		args := []string{
			"--name=apiservertest",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=apiservertest=" + peerURL,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync=true",
			"--log-level=warn",
		}
		p, err := startProcess("etcd", filepath.Join(s.binDir, "etcd"), args, logPath, s.netns)
		if err != nil {
			return err
		}
		s.etcd = p
		err = waitFor(ctx, p, "etcd", func(ctx context.Context) error {
			return httpGetOK(ctx, s.httpClient(nil), clientURL+"/health", "")
		})
		if err == nil {
			s.etcdURL = clientURL
			return nil
		}
		lastErr = err
		p.stop(etcdGrace)
		if !p.logContains("address already in use") {
			break
		}
		// A port was taken after freePorts released it; the data dir may
		// hold a half-initialised member, so start from scratch.
		if err := os.RemoveAll(dataDir); err != nil {
			return fmt.Errorf("reset etcd data directory: %w", err)
		}
	}
	return fmt.Errorf("start etcd: %w\n--- last %d lines of %s ---\n%s", lastErr, logTailLines, logPath, logTail(logPath, logTailLines))
}

// apiserverArgs returns kube-apiserver's command line for the current port.
func (s *Server) apiserverArgs() []string {
	cidrs := make([]string, len(s.serviceCIDRs))
	for i, p := range s.serviceCIDRs {
		cidrs[i] = p.String()
	}
	keyFile := filepath.Join(s.dir, "sa.key")
	args := []string{
		"--advertise-address=" + s.addr.String(),
		"--bind-address=" + s.addr.String(),
		"--secure-port=" + strconv.Itoa(s.apiPort),
		"--cert-dir=" + filepath.Join(s.dir, "certs"),
		"--etcd-servers=" + s.etcdURL,
		"--endpoint-reconciler-type=none",
		"--authorization-mode=" + s.authzMode,
		"--token-auth-file=" + filepath.Join(s.dir, "tokens.csv"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + keyFile,
		"--service-account-signing-key-file=" + keyFile,
		"--service-cluster-ip-range=" + strings.Join(cidrs, ","),
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
	}
	return append(args, s.extraArgs...)
}

// startAPIServer starts kube-apiserver and waits until it is ready (see
// readyzCheck). With newPort (the first start) it picks a free port, picking
// again if that port is taken before the apiserver binds it, and records the
// serving certificate. Without (a restart) it reuses s.apiPort, retrying
// briefly while the port is still busy, and requires the certificate to be
// unchanged, so that host, token and caData never change after Start and
// RESTConfig needs no lock. The caller holds s.mu.
func (s *Server) startAPIServer(ctx context.Context, newPort bool) error {
	logPath := filepath.Join(s.dir, "kube-apiserver.log")
	certPath := filepath.Join(s.dir, "certs", "apiserver.crt")
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if newPort {
			ports, err := s.freePorts(1)
			if err != nil {
				return err
			}
			s.apiPort = ports[0]
			s.host = "https://" + netip.AddrPortFrom(s.addr, uint16(s.apiPort)).String()
		}
		p, err := startProcess("kube-apiserver", filepath.Join(s.binDir, "kube-apiserver"), s.apiserverArgs(), logPath, s.netns)
		if err != nil {
			return err
		}
		s.apiserver = p
		err = waitFor(ctx, p, "kube-apiserver", s.readyzCheck(certPath))
		if err == nil {
			ca, err := readCertChain(certPath)
			if err != nil {
				return err
			}
			if newPort {
				s.caData = ca
			} else if !bytes.Equal(ca, s.caData) {
				// Clients hold the old chain; they could not connect.
				return fmt.Errorf("start kube-apiserver: serving certificate in %s changed across restart", certPath)
			}
			return nil
		}
		lastErr = err
		p.stop(apiserverGrace)
		if !p.logContains("address already in use") {
			break
		}
		if !newPort {
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return fmt.Errorf("start kube-apiserver: %w\n--- last %d lines of %s ---\n%s", lastErr, logTailLines, logPath, logTail(logPath, logTailLines))
}

// readyzCheck returns a probe that succeeds once /readyz reports ready and
// the "default" and "kube-system" namespaces exist. It trusts only the
// certificate chain kube-apiserver wrote to certPath; the file appears
// shortly after the process starts, and until it parses the probe fails and
// is retried.
func (s *Server) readyzCheck(certPath string) func(context.Context) error {
	var client *http.Client
	return func(ctx context.Context) error {
		if client == nil {
			chain, err := readCertChain(certPath)
			if err != nil {
				return err
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(chain)
			client = s.httpClient(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
		}
		err := httpGetOK(ctx, client, s.host+"/readyz", s.token)
		if err != nil && errors.As(err, new(*tls.CertificateVerificationError)) {
			client = nil // the file was read while being written; reload it
		}
		if err != nil {
			return err
		}
		// /readyz does not wait for the system-namespaces controller, and
		// tests create objects in "default" straight away.
		for _, ns := range []string{"default", "kube-system"} {
			if err := httpGetOK(ctx, client, s.host+"/api/v1/namespaces/"+ns, s.token); err != nil {
				return err
			}
		}
		return nil
	}
}

// readCertChain reads a PEM file and checks that it holds at least one
// parsable certificate.
func readCertChain(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read serving certificate: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("read serving certificate %s: no PEM certificate", path)
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return nil, fmt.Errorf("read serving certificate %s: %w", path, err)
	}
	return b, nil
}

// waitFor polls check every 100 ms until it succeeds, p exits, or ctx ends.
func waitFor(ctx context.Context, p *process, what string, check func(context.Context) error) error {
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last probe: %v)", what, ctx.Err(), err)
		case <-p.done:
			return p.exitError()
		case <-ticker.C:
		}
	}
}

// httpGetOK performs a GET and succeeds only on status 200.
func httpGetOK(ctx context.Context, client *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: %s", url, resp.Status)
	}
	return nil
}

// httpClient returns a client for the readiness probes, without
// keep-alives, whose connections are opened in the server's namespace.
func (s *Server) httpClient(tlsConfig *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:       s.dialContext,
		TLSClientConfig:   tlsConfig,
		DisableKeepAlives: true,
	}}
}

// dialContext opens a connection in the server's network namespace.
func (s *Server) dialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	if s.netns == "" {
		return d.DialContext(ctx, network, address)
	}
	var conn net.Conn
	err := topo.InNS(s.netns, func() error {
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// freePorts returns n distinct TCP ports free in the server's namespace.
func (s *Server) freePorts(n int) ([]int, error) {
	if s.netns == "" {
		return freePorts(n)
	}
	var ports []int
	err := topo.InNS(s.netns, func() error {
		var err error
		ports, err = freePorts(n)
		return err
	})
	return ports, err
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// when returned, not reserved: callers retry if one is taken meanwhile.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close() // held until all n are chosen, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeTokenFile writes a kube-apiserver --token-auth-file with one random
// token for a user in system:masters, and returns the token.
func writeTokenFile(path string) (string, error) {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	token := hex.EncodeToString(raw)
	line := token + `,apiservertest-admin,apiservertest-admin,"system:masters"` + "\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		return "", fmt.Errorf("write token file: %w", err)
	}
	return token, nil
}

// writeServiceAccountKey writes a new ECDSA P-256 private key as PEM. The
// same file serves as --service-account-signing-key-file and, since
// kube-apiserver derives the public key from a private one,
// --service-account-key-file.
func writeServiceAccountKey(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode service-account key: %w", err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write service-account key: %w", err)
	}
	return nil
}

// writeKubeconfig writes a kubeconfig for the server to KubeconfigPath.
func (s *Server) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[kubeconfigName] = &clientcmdapi.Cluster{
		Server:                   s.host,
		CertificateAuthorityData: s.caData,
	}
	cfg.AuthInfos[kubeconfigName] = &clientcmdapi.AuthInfo{Token: s.token}
	cfg.Contexts[kubeconfigName] = &clientcmdapi.Context{
		Cluster:   kubeconfigName,
		AuthInfo:  kubeconfigName,
		Namespace: "default",
	}
	cfg.CurrentContext = kubeconfigName
	if err := clientcmd.WriteToFile(*cfg, s.KubeconfigPath()); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// RESTConfig returns a new client configuration for the server (the caller
// may modify it). It authenticates as a member of system:masters and
// verifies the server's self-signed certificate. Client-side rate limiting
// is disabled (QPS -1), since tests often create many objects quickly. The
// configuration stays valid across Restart.
func (s *Server) RESTConfig() *rest.Config {
	c := &rest.Config{
		Host:            s.host,
		BearerToken:     s.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: append([]byte(nil), s.caData...)},
		QPS:             -1,
	}
	if s.netns != "" {
		c.Dial = s.dialContext
	}
	return c
}

// KubeconfigPath returns the path of a kubeconfig file for the server, for
// separate processes (--kubeconfig). It holds the same credentials as
// RESTConfig, uses namespace "default", stays valid across Restart, and is
// removed by Stop.
func (s *Server) KubeconfigPath() string {
	return filepath.Join(s.dir, "kubeconfig")
}

// Host returns the apiserver's URL, https://<Address>:<port>. The port does
// not change across Restart.
func (s *Server) Host() string { return s.host }

// ServiceCIDRs returns the parsed --service-cluster-ip-range: one prefix, or
// two for dual stack, in the order given.
func (s *Server) ServiceCIDRs() []netip.Prefix {
	return append([]netip.Prefix(nil), s.serviceCIDRs...)
}

// Restart stops kube-apiserver (SIGTERM, then SIGKILL after 15 s) and starts
// it again on the same port with the same flags, certificate and
// credentials, keeping etcd and all stored objects, then waits for /readyz
// as Start does.
// Clients see connection errors while it is down, as with a real restart.
// ctx bounds the wait (two minutes when it has no deadline). Restart fails
// after Stop; on a failed start the server is left without an apiserver and
// Stop still cleans up.
func (s *Server) Restart(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultReadyTimeout)
		defer cancel()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("apiservertest: restart: server is stopped")
	}
	if s.apiserver != nil {
		s.stopProcess(s.apiserver, apiserverGrace)
	}
	if err := s.startAPIServer(ctx, false); err != nil {
		return fmt.Errorf("apiservertest: restart: %w", err)
	}
	return nil
}

// Stop stops kube-apiserver, then etcd (SIGTERM to each process group,
// SIGKILL after a grace period) and removes the temporary directory with
// the logs, data and kubeconfig. If the test has failed, it first logs the
// tail of both logs. Stop is idempotent; later calls return nil. It is
// registered with tb.Cleanup by Start, so calling it is optional in tests.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	if s.tb != nil && s.tb.Failed() {
		for _, name := range []string{"kube-apiserver.log", "etcd.log"} {
			path := filepath.Join(s.dir, name)
			s.tb.Logf("apiservertest: last %d lines of %s:\n%s", logTailLines, path, logTail(path, logTailLines))
		}
	}
	if s.apiserver != nil {
		s.stopProcess(s.apiserver, apiserverGrace)
	}
	if s.etcd != nil {
		s.stopProcess(s.etcd, etcdGrace)
	}
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("apiservertest: remove %s: %w", s.dir, err)
	}
	return nil
}

// stopProcess stops p and notes in the test log when it ignored SIGTERM for
// the whole grace period and had to be killed.
func (s *Server) stopProcess(p *process, grace time.Duration) {
	if p.stop(grace) && s.tb != nil {
		s.tb.Logf("apiservertest: %s did not exit within %v of SIGTERM; killed", p.name, grace)
	}
}
