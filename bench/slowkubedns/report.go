package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
)

// readResults reads load and hostile result files, keeping their order.
func readResults(files []string) (slow []*LoadResult, hostile []*HostileResult, err error) {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		var kind struct{ Kind string }
		if err := json.Unmarshal(b, &kind); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f, err)
		}
		switch kind.Kind {
		case "load":
			r := &LoadResult{}
			err = json.Unmarshal(b, r)
			slow = append(slow, r)
		case "hostile":
			r := &HostileResult{}
			err = json.Unmarshal(b, r)
			hostile = append(hostile, r)
		default:
			err = fmt.Errorf("kind %q is neither load nor hostile", kind.Kind)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	return slow, hostile, nil
}

// Targets from design.md.
const (
	targetClusterP99Ms = 20
	targetClusterMaxMs = 200
	rssShareOfLimit    = 0.6
)

// writeReport writes the markdown tables: the slow-kube-dns load per
// server, localdns's verdicts, and localdns's peak RSS under each hostile
// load against rssShareOfLimit of memoryLimit (bytes).
func writeReport(w io.Writer, slow []*LoadResult, hostile []*HostileResult, memoryLimit int64) error {
	var b strings.Builder
	if len(slow) > 0 {
		b.WriteString("| server | cluster-name misses | p50 | p99 | max | SERVFAIL | other | no reply | external names | NOERROR | SERVFAIL | other | no reply |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range slow {
			c, e := r.Cluster, r.External
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %d | %d | %d | %d | %d | %d | %d | %d |\n", r.Name,
				c.Sent, msec(c.P50Ms), msec(c.P99Ms), msec(c.MaxMs), c.Rcodes["SERVFAIL"], other(c), c.NoReply,
				e.Sent, e.Rcodes["NOERROR"], e.Rcodes["SERVFAIL"], other(e), e.NoReply)
		}
	}
	if i := slices.IndexFunc(slow, func(r *LoadResult) bool { return r.Name == "localdns" }); i >= 0 {
		c, e := slow[i].Cluster, slow[i].External
		b.WriteString("\n| target (design.md) | localdns | verdict |\n|---|---:|---|\n")
		verdict(&b, fmt.Sprintf("cluster-name misses p99 <= %d ms", targetClusterP99Ms), msec(c.P99Ms), c.P99Ms <= targetClusterP99Ms)
		verdict(&b, fmt.Sprintf("cluster-name misses max < %d ms", targetClusterMaxMs), msec(c.MaxMs), c.MaxMs < targetClusterMaxMs)
		failed := c.Sent - c.Rcodes["NOERROR"]
		verdict(&b, "cluster-name misses: 0 SERVFAIL, 0 unanswered", fmt.Sprintf("%d of %d", failed, c.Sent), failed == 0 && c.Sent > 0)
		verdict(&b, "external names answered (kube-dns answers every one)", fmt.Sprintf("%d of %d", e.Rcodes["NOERROR"], e.Sent), e.Rcodes["NOERROR"] == e.Sent && e.Sent > 0)
	}
	if len(hostile) > 0 {
		target := rssShareOfLimit * float64(memoryLimit) / (1 << 20)
		fmt.Fprintf(&b, "\nlocaldns-nodecache's peak RSS (VmHWM) under each hostile load, fresh each time, against %.0f%% of the DaemonSet's memory limit (%s = %.1f MiB); meanwhile another client's cluster-name misses (50/s):\n\n",
			100*rssShareOfLimit, mib(memoryLimit), target)
		b.WriteString("| load | what | peak RSS | verdict | hostile client's replies | other client: misses | SERVFAIL | no reply | p99 | max |\n")
		b.WriteString("|---|---|---:|---|---|---:|---:|---:|---:|---:|\n")
		for _, r := range hostile {
			rss := float64(r.PeakRSSKiB) / 1024
			o := r.Other
			fmt.Fprintf(&b, "| %s | %s | %.1f MiB | %s | %s | %d | %d | %d | %s | %s |\n", r.Load, r.What, rss, metOrMissed(rss <= target),
				replies(r.Hostile), o.Sent, o.Rcodes["SERVFAIL"], o.NoReply, msec(o.P99Ms), msec(o.MaxMs))
		}
		for _, r := range hostile {
			if t := r.TCP; t != nil {
				fmt.Fprintf(&b, "\ntcp: %d connections opened (%d failed to connect or write), %d closed by the server by the end of the hold; another client's TCP query during the hold: %s.\n",
					t.Opened, t.DialFailed, t.ClosedByServer, t.OtherClientTCP)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func verdict(b *strings.Builder, what, value string, ok bool) {
	fmt.Fprintf(b, "| %s | %s | %s |\n", what, value, metOrMissed(ok))
}

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func msec(ms float64) string { return fmt.Sprintf("%.1f ms", ms) }

func mib(bytes int64) string {
	if bytes%(1<<20) == 0 {
		return fmt.Sprintf("%dMi", bytes>>20)
	}
	return fmt.Sprintf("%d bytes", bytes)
}

// other counts the replies that were neither NOERROR nor SERVFAIL, and the
// queries whose connection failed.
func other(t *Tally) int {
	n := t.Failed
	for rcode, c := range t.Rcodes {
		if rcode != "NOERROR" && rcode != "SERVFAIL" {
			n += c
		}
	}
	return n
}

// replies lists a tally's replies by RCODE, then the unanswered and failed.
func replies(t *Tally) string {
	var parts []string
	for _, rcode := range slices.Sorted(maps.Keys(t.Rcodes)) {
		parts = append(parts, fmt.Sprintf("%s %d", rcode, t.Rcodes[rcode]))
	}
	if t.NoReply > 0 {
		parts = append(parts, fmt.Sprintf("no reply %d", t.NoReply))
	}
	if t.Failed > 0 {
		parts = append(parts, fmt.Sprintf("failed %d", t.Failed))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
