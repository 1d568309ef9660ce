package clients

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/localdns/localdns/e2e/cluster"
)

// Kinds of client, one image each.
const (
	Glibc = "glibc" // gaiload, getaddrinfo of glibc
	Musl  = "musl"  // gaiload, getaddrinfo of musl (static)
	Go    = "go"    // dnsload, Go's resolver
)

// Kinds lists every client kind.
var Kinds = []string{Glibc, Musl, Go}

// imageRef is the image of a client kind.
func imageRef(kind string) string { return "localdns.test/e2e/client-" + kind + ":1" }

// Images are the client images of b, for cluster.BuildAndImport.
func (b Binaries) Images() []cluster.ImageSpec {
	return []cluster.ImageSpec{
		{Ref: imageRef(Glibc), Entrypoint: []string{"/gaiload"}, FilesWithLibs: map[string]string{"/gaiload": b.Glibc}},
		{Ref: imageRef(Musl), Entrypoint: []string{"/gaiload"}, Files: map[string]string{"/gaiload": b.Musl}},
		{Ref: imageRef(Go), Entrypoint: []string{"/dnsload"}, Files: map[string]string{"/dnsload": b.Go}},
	}
}

// Load is one load run's shape.
type Load struct {
	// Host may hold dnsload.UniqueMark once: every lookup then asks a new
	// name (both clients number their lookups into it).
	Host        string
	Concurrency int
	// Duration and Slow are rounded to whole seconds and milliseconds for
	// gaiload.
	Duration   time.Duration
	Slow       time.Duration
	MaxLookups int64
	// Rate caps lookups started per second over all threads; 0 for none.
	// gaiload takes whole lookups per second.
	Rate float64
	// OwnResolvers: the Go client's goroutines do not share a resolver, so
	// no two lookups share one resolution (dnsload.Config.OwnResolvers).
	// The C clients' threads never do: glibc and musl do not coalesce.
	OwnResolvers bool
}

// args are the client's flags for l.
func (l Load) args(kind string) ([]string, error) {
	switch kind {
	case Glibc, Musl:
		args := []string{"-h", l.Host, "-c", fmt.Sprint(l.Concurrency), "-d", fmt.Sprint(int64(l.Duration.Seconds())),
			"-l", fmt.Sprint(l.Slow.Milliseconds()), "-m", fmt.Sprint(l.MaxLookups)}
		if l.Rate != 0 {
			if l.Rate != math.Trunc(l.Rate) || l.Rate < 1 {
				return nil, fmt.Errorf("%s client: rate %g, want whole lookups per second", kind, l.Rate)
			}
			args = append(args, "-r", fmt.Sprint(int64(l.Rate)))
		}
		return args, nil
	case Go:
		args := []string{"-host", l.Host, "-c", fmt.Sprint(l.Concurrency), "-d", l.Duration.String(),
			"-slow", l.Slow.String(), "-max-lookups", fmt.Sprint(l.MaxLookups), "-rate", fmt.Sprint(l.Rate), "-json"}
		if l.OwnResolvers {
			args = append(args, "-own-resolvers")
		}
		return args, nil
	}
	return nil, fmt.Errorf("unknown client kind %q", kind)
}

// clientCPURequest is each client pod's CPU request, its weight when the
// node's CPU is contended. The clients stand for application pods, which
// request CPU; a BestEffort pod weighs 2 (of 1024 a CPU), so a busy
// neighbour can keep it off the CPU for a second, which it would then
// count as lookup time whatever DNS did. 25m keeps the node cache (100m)
// the heavier of the two, and a scenario's loads together small beside the
// node's 2 CPUs.
const clientCPURequest = "25m"

// PodManifest is a pod (restartPolicy Never) running the client of kind
// with load; its log is the client's JSON result (see ParseResult).
// annotations (may be nil) are the pod's, e.g. localdns.io/mode.
func PodManifest(namespace, name, kind string, l Load, annotations map[string]string) ([]byte, error) {
	args, err := l.args(kind)
	if err != nil {
		return nil, err
	}
	pod := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata": map[string]any{"name": name, "namespace": namespace, "annotations": annotations,
			"labels": map[string]string{"app": "localdns-e2e-client"}},
		"spec": map[string]any{
			"restartPolicy":                 "Never",
			"terminationGracePeriodSeconds": 0,
			"containers": []map[string]any{{
				"name": "load", "image": imageRef(kind), "imagePullPolicy": "Never", "args": args,
				"resources": map[string]any{"requests": map[string]string{"cpu": clientCPURequest}},
			}},
		},
	}
	return json.Marshal(pod)
}
