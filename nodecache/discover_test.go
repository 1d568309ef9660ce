package nodecache

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/localdns/localdns/dnsengine/forward"
)

func kubeDNS(ips []string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
		Spec:       corev1.ServiceSpec{ClusterIPs: ips, Ports: ports},
	}
}

func TestUpstreamsOf(t *testing.T) {
	standard := []corev1.ServicePort{
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
		{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP},
	}
	tests := []struct {
		name      string
		svc       *corev1.Service
		transport forward.Transport
		want      []netip.AddrPort
		wantErr   bool
	}{
		{"standard tcp", kubeDNS([]string{"10.96.0.10"}, standard...), TransportTCP, aps("10.96.0.10:53"), false},
		{"standard udp", kubeDNS([]string{"10.96.0.10"}, standard...), TransportUDP, aps("10.96.0.10:53"), false},
		{"dual stack", kubeDNS([]string{"10.96.0.10", "fd00:10:96::a"}, standard...), TransportTCP, aps("10.96.0.10:53", "[fd00:10:96::a]:53"), false},
		{"dns-named port preferred over the first",
			kubeDNS([]string{"10.96.0.10"}, corev1.ServicePort{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP}, corev1.ServicePort{Name: "dns-tcp", Port: 5353, Protocol: corev1.ProtocolTCP}),
			TransportTCP, aps("10.96.0.10:5353"), false},
		{"unnamed port of the protocol", kubeDNS([]string{"10.96.0.10"}, corev1.ServicePort{Port: 1053, Protocol: corev1.ProtocolUDP}), TransportUDP, aps("10.96.0.10:1053"), false},
		{"no port of the protocol defaults to 53", kubeDNS([]string{"10.96.0.10"}, corev1.ServicePort{Name: "dns", Port: 1053, Protocol: corev1.ProtocolUDP}), TransportTCP, aps("10.96.0.10:53"), false},
		{"only the legacy ClusterIP field", &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.10"}}, TransportTCP, aps("10.0.0.10:53"), false},
		{"headless", kubeDNS([]string{"None"}, standard...), TransportTCP, nil, true},
		{"no IP", kubeDNS(nil, standard...), TransportTCP, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := upstreamsOf(tc.svc, tc.transport)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, wantErr %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWaitForKubeDNSRetries(t *testing.T) {
	notFound := apierrors.NewNotFound(schema.GroupResource{Resource: "services"}, "kube-dns")
	replies := []struct {
		svc *corev1.Service
		err error
	}{
		{nil, notFound},
		{kubeDNS(nil), nil}, // created, but no IP yet
		{kubeDNS([]string{"10.96.0.10"}), nil},
	}
	calls := 0
	get := func(context.Context) (*corev1.Service, error) {
		r := replies[min(calls, len(replies)-1)]
		calls++
		return r.svc, r.err
	}
	got, err := waitForKubeDNS(context.Background(), get, TransportTCP, backoff{initial: time.Millisecond, max: 2 * time.Millisecond}, discard())
	if err != nil {
		t.Fatal(err)
	}
	if want := aps("10.96.0.10:53"); !reflect.DeepEqual(got, want) || calls != 3 {
		t.Errorf("got %v after %d calls, want %v after 3", got, calls, want)
	}
}

func TestWaitForKubeDNSStopsWithContext(t *testing.T) {
	notFound := apierrors.NewNotFound(schema.GroupResource{Resource: "services"}, "kube-dns")
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	get := func(context.Context) (*corev1.Service, error) {
		calls++
		if calls == 2 {
			cancel()
		}
		return nil, notFound
	}
	_, err := waitForKubeDNS(ctx, get, TransportTCP, backoff{initial: time.Millisecond, max: time.Millisecond}, discard())
	if !errors.Is(err, context.Canceled) || !apierrors.IsNotFound(err) {
		t.Errorf("error %v, want one wrapping context.Canceled and the last NotFound", err)
	}
}

func TestDiscoverUpstreamOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	_, err := DiscoverUpstream(context.Background(), TransportTCP, discard())
	if err == nil || !strings.Contains(err.Error(), "pass --upstream") {
		t.Errorf("error %v, want one telling to pass --upstream", err)
	}
}
