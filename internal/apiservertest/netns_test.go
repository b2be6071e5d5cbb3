package apiservertest

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubenat/kubenat/internal/netnstest"
)

// TestInNetworkNamespace runs the server inside a namespace of its own, on
// an address that exists only there, and uses it through RESTConfig, whose
// connections are opened in that namespace.
func TestInNetworkNamespace(t *testing.T) {
	ns := netnstest.NewNamespace(t)
	addr := netip.MustParseAddr("10.255.0.1")
	if out, err := exec.Command("ip", "-n", ns, "addr", "add", addr.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("adding %s in %s: %v: %s", addr, ns, err, out)
	}
	srv, err := Start(t.Context(), t, Options{NetNS: ns, Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(srv.Host(), "https://10.255.0.1:") {
		t.Errorf("Host() = %s, want the namespace's address", srv.Host())
	}
	for _, p := range []*process{srv.etcd, srv.apiserver} {
		if got, want := netnsOf(t, "/proc/"+strconv.Itoa(p.cmd.Process.Pid)+"/ns/net"), netnsOf(t, "/run/netns/"+ns); got != want {
			t.Errorf("%s runs in namespace %d, want %s (%d)", p.name, got, ns, want)
		}
	}
	cs, err := kubernetes.NewForConfig(srv.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("default").Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a Service through the namespace: %v", err)
	}
	if svc.Spec.ClusterIP == "" {
		t.Error("no ClusterIP allocated")
	}
	kc, err := clientcmd.LoadFromFile(srv.KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if got := kc.Clusters[kubeconfigName].Server; got != srv.Host() {
		t.Errorf("kubeconfig server %s, want %s", got, srv.Host())
	}
	if err := srv.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("default").Get(context.Background(), "web", metav1.GetOptions{}); err != nil {
		t.Errorf("after Restart: %v", err)
	}
}

// netnsOf returns the inode that identifies a network namespace file.
func netnsOf(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
