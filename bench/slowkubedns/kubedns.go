package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/localdns/localdns/internal/kubednsfake"
)

// The zones of the bench's kube-dns. .test is reserved (RFC 6761): no name
// here exists anywhere else.
const (
	clusterZone  = "cluster.local."
	externalZone = "ext.test."   // answered after the external delay
	stuckZone    = "stuck.test." // never answered
	bigZone      = "big.test."   // a bigSize TXT record for every name
	services     = 10000         // Services in the cluster zone: the unique cluster names a load can ask
	bigSize      = 60000
)

// writeKubeDNS writes dir/Corefile and the zone files it names: the real
// CoreDNS as a cluster's kube-dns on addr.
func writeKubeDNS(dir string, addr netip.AddrPort, externalDelay time.Duration) error {
	if err := writeZoneFiles(dir); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "Corefile"), []byte(kubeDNSCorefile(dir, addr, externalDelay)), 0o644)
}

// writeZoneFiles writes the cluster zone (the fake kube-dns's zone, with
// services Services, TTL 5) and the big zone for CoreDNS's file plugin.
func writeZoneFiles(dir string) error {
	cluster, err := kubednsfake.NewClusterZone(clusterZone, services, kubednsfake.ClusterTTL)
	if err != nil {
		return err
	}
	var clusterFile, bigFile strings.Builder
	if err := cluster.WriteMasterFile(&clusterFile); err != nil {
		return err
	}
	if err := kubednsfake.WriteBigZoneFile(&bigFile, kubednsfake.BigZone{Name: bigZone, Size: bigSize}); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return errors.Join(
		os.WriteFile(filepath.Join(dir, "cluster.local.zone"), []byte(clusterFile.String()), 0o644),
		os.WriteFile(filepath.Join(dir, "big.test.zone"), []byte(bigFile.String()), 0o644),
	)
}

// kubeDNSCorefile is kube-dns's configuration: the cluster zone from a file
// (answered at once, as the kubernetes plugin does), the external zone after
// a delay (CoreDNS's erratic plugin sleeps in the handler, as the forward
// plugin waits for a slow resolver: the TCP connection's next query waits
// too), a zone that never answers and a zone a pod controls. No cache: every
// name a load asks is new.
func kubeDNSCorefile(dir string, addr netip.AddrPort, externalDelay time.Duration) string {
	block := func(zone, body string) string {
		return fmt.Sprintf("%s:%d {\n    bind %s\n%s}\n", zone, addr.Port(), addr.Addr(), body)
	}
	return block(clusterZone, "    file "+filepath.Join(dir, "cluster.local.zone")+"\n") +
		block(externalZone, fmt.Sprintf("    erratic {\n        delay 1 %s\n    }\n", externalDelay)) +
		block(stuckZone, "    erratic {\n        drop 1\n    }\n") +
		block(bigZone, "    file "+filepath.Join(dir, "big.test.zone")+"\n")
}
