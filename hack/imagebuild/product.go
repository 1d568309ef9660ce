package main

import (
	"fmt"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// productImage is one of the localdns images and its file name.
type productImage struct {
	file string
	spec imageSpec
}

// nonroot is the user the webhook and stub run as (distroless's nonroot).
const nonroot = "65532:65532"

// multiarch is Debian's library directory name for the host architecture:
// the node cache image carries the host's iptables, so it is built for the
// host's architecture only.
var multiarch = map[string]string{
	"amd64": "x86_64-linux-gnu",
	"arm64": "aarch64-linux-gnu",
}

// iptablesLinks are the names localdns-nodecache runs, as Debian's iptables
// package links them: both backends under explicit names, the plain names
// on nft (Debian's default; --iptables-mode auto picks the explicit name that
// matches the rules already on the node).
func iptablesLinks() []symlinkSpec {
	var links []symlinkSpec
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			links = append(links,
				symlinkSpec{dst: "/usr/sbin/" + family + "-nft" + suffix, target: "xtables-nft-multi"},
				symlinkSpec{dst: "/usr/sbin/" + family + "-legacy" + suffix, target: "xtables-legacy-multi"},
				symlinkSpec{dst: "/usr/sbin/" + family + suffix, target: "xtables-nft-multi"},
			)
		}
	}
	return links
}

// productImages lists the images `make images` builds from the static
// binaries in cfg.binDir: the three of the product, and the stub's variant
// whose binary carries the file capability cap_net_bind_service=+ep (binds
// 127.0.0.1:53 as non-root without the pod sysctl; see docs/deploy.md).
// Keep in step with the Dockerfile.
func productImages(cfg productConfig) []productImage {
	plat := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	repo := cfg.repository
	ref := func(image string) name.Tag {
		// parseFlags checked the repository and the tag.
		t, err := name.NewTag(repo + "/" + image + ":" + cfg.tag)
		if err != nil {
			panic(fmt.Sprintf("image reference: %v", err))
		}
		return t
	}
	bin := func(name string) copySpec {
		return copySpec{src: filepath.Join(cfg.binDir, name), dst: "/" + name}
	}
	xtablesDir := fmt.Sprintf("/usr/lib/%s/xtables", multiarch[runtime.GOARCH])
	// The webhook and the stubs: their static binary, run as nonroot.
	nonrootBinary := func(image, binary string) imageSpec {
		return imageSpec{
			ref:        ref(image),
			entrypoint: []string{"/" + binary},
			user:       nonroot,
			etcPasswd:  true,
			platform:   plat,
			copies:     []copySpec{bin(binary)},
		}
	}
	stubFileCap := nonrootBinary("stub-filecap", "localdns-stub")
	stubFileCap.fileCapabilities = map[string][]capability{"/localdns-stub": {capNetBindService}}
	return []productImage{
		{file: "nodecache.tar", spec: imageSpec{
			ref:        ref("nodecache"),
			entrypoint: []string{"/localdns-nodecache"},
			// root, with the capabilities the DaemonSet grants: iptables
			// and netlink check capabilities, not the uid, but a non-root
			// process never gets added capabilities in its effective set.
			user:     "0:0",
			platform: plat,
			copies: []copySpec{
				bin("localdns-nodecache"),
				{src: "/usr/sbin/xtables-nft-multi", dst: "/usr/sbin/xtables-nft-multi", withLibs: true},
				{src: "/usr/sbin/xtables-legacy-multi", dst: "/usr/sbin/xtables-legacy-multi", withLibs: true},
				// iptables loads its matches and targets (udp, tcp, CT,
				// NOTRACK, comment) as plugins from here.
				{src: xtablesDir, dst: xtablesDir, withLibs: true},
				// protocol names (-p udp) resolve through this file.
				{src: "/etc/protocols", dst: "/etc/protocols"},
			},
			symlinks: iptablesLinks(),
		}},
		{file: "webhook.tar", spec: nonrootBinary("webhook", "localdns-webhook")},
		{file: "stub.tar", spec: nonrootBinary("stub", "localdns-stub")},
		{file: "stub-filecap.tar", spec: stubFileCap},
	}
}
