package apiservertest_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubenat/kubenat/internal/apiservertest"
)

// TestNodePortServiceSurvivesRestart proves the server is a real apiserver
// (it allocates a ClusterIP and a NodePort) and that Restart keeps etcd's
// data and the endpoint clients use. In CI it fails, never skips, when the
// binaries cannot be found or built.
func TestNodePortServiceSurvivesRestart(t *testing.T) {
	ctx := t.Context()
	start := time.Now()
	srv, err := apiservertest.Start(ctx, t, apiservertest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver ready at %s after %v", srv.Host(), time.Since(start).Round(time.Millisecond))

	cs, err := kubernetes.NewForConfig(srv.RESTConfig())
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{
				Name:       "http",
				Protocol:   corev1.ProtocolTCP,
				Port:       80,
				TargetPort: intstr.FromInt32(8080),
			}},
		},
	}
	created, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Service: %v", err)
	}

	ip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("allocated ClusterIP %q: %v", created.Spec.ClusterIP, err)
	}
	cidrs := srv.ServiceCIDRs()
	if len(cidrs) != 1 || cidrs[0].String() != apiservertest.DefaultServiceClusterIPRange {
		t.Fatalf("ServiceCIDRs() = %v, want [%s]", cidrs, apiservertest.DefaultServiceClusterIPRange)
	}
	if !cidrs[0].Contains(ip) {
		t.Errorf("ClusterIP %s is outside %s", ip, cidrs[0])
	}
	nodePort := created.Spec.Ports[0].NodePort
	if nodePort < 30000 || nodePort > 32767 {
		t.Errorf("NodePort %d is outside 30000-32767", nodePort)
	}

	host := srv.Host()
	start = time.Now()
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver restarted in %v", time.Since(start).Round(time.Millisecond))
	if srv.Host() != host {
		t.Errorf("Host() after Restart = %s, want %s", srv.Host(), host)
	}

	// The old client must keep working: same port, certificate and token.
	got, err := cs.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get Service after restart: %v", err)
	}
	if got.UID != created.UID || got.Spec.ClusterIP != created.Spec.ClusterIP || got.Spec.Ports[0].NodePort != nodePort {
		t.Errorf("after restart: uid %s clusterIP %s nodePort %d, want %s %s %d",
			got.UID, got.Spec.ClusterIP, got.Spec.Ports[0].NodePort, created.UID, created.Spec.ClusterIP, nodePort)
	}

	// The kubeconfig file is what a separate process would be given.
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.KubeconfigPath())
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	cs2, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client from kubeconfig: %v", err)
	}
	if _, err := cs2.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		t.Errorf("get Service through kubeconfig: %v", err)
	}

	if err := srv.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := srv.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded, want an error")
	}
}

// TestStartRejectsBadServiceRange checks option validation, which happens
// before any binary is looked for.
func TestStartRejectsBadServiceRange(t *testing.T) {
	for _, r := range []string{"10.96.0.1/16", "not-a-cidr", "10.96.0.0/16,10.97.0.0/16", "10.0.0.0/16,fd00::/108,10.1.0.0/16"} {
		_, err := apiservertest.Start(t.Context(), t, apiservertest.Options{ServiceClusterIPRange: r, BinDir: "/nonexistent"})
		if err == nil || !strings.Contains(err.Error(), "service cluster IP range") {
			t.Errorf("range %q: err = %v, want a range error", r, err)
		}
	}
}

// TestExplicitBinDirMissing checks that a configured but empty binary
// directory is an error (never a skip), even outside CI.
func TestExplicitBinDirMissing(t *testing.T) {
	_, err := apiservertest.Start(t.Context(), t, apiservertest.Options{BinDir: t.TempDir()})
	if !errors.Is(err, apiservertest.ErrBinariesNotFound) {
		t.Fatalf("err = %v, want ErrBinariesNotFound", err)
	}
}
