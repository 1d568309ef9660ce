package nodecache

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// loopbackName is the interface that holds the listen IPs when the kernel
// cannot create dummy interfaces.
const loopbackName = "lo"

// nodeLink makes the listen IPs local addresses of the node: on a dummy
// interface of its own, or on lo where the kernel has no dummy type. It
// adopts whatever already exists, so a restarted or second instance changes
// nothing. Netlink calls act on the network namespace of the calling thread.
type nodeLink struct {
	name   string
	ips    []netip.Addr
	logger *slog.Logger

	// onLoopback is set once creating the dummy interface failed for lack of
	// kernel support; from then on the IPs live on lo.
	onLoopback bool
}

func newNodeLink(name string, ips []netip.Addr, logger *slog.Logger) *nodeLink {
	return &nodeLink{name: name, ips: ips, logger: logger}
}

// ensure creates or adopts the interface, brings it up and adds the missing
// addresses. It returns a description of every change it made (none when the
// node was already set up).
func (n *nodeLink) ensure() ([]string, error) {
	var changes []string
	link, created, err := n.link()
	if err != nil {
		return nil, err
	}
	if created {
		changes = append(changes, fmt.Sprintf("created dummy interface %s", n.name))
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return changes, fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
		}
		changes = append(changes, fmt.Sprintf("set %s up", link.Attrs().Name))
	}
	have, err := addrsOf(link)
	if err != nil {
		return changes, err
	}
	for _, ip := range n.ips {
		if slices.ContainsFunc(have, func(p netip.Prefix) bool { return p.Addr() == ip }) {
			continue
		}
		if err := netlink.AddrAdd(link, hostAddr(ip)); err != nil && !errors.Is(err, unix.EEXIST) {
			return changes, fmt.Errorf("add %s to %s: %w", ip, link.Attrs().Name, err)
		}
		changes = append(changes, fmt.Sprintf("added %s to %s", netip.PrefixFrom(ip, ip.BitLen()), link.Attrs().Name))
	}
	return changes, nil
}

// link returns the interface to hold the IPs, creating the dummy interface
// when it is missing, or lo when the kernel cannot.
func (n *nodeLink) link() (link netlink.Link, created bool, err error) {
	if n.onLoopback {
		link, err = netlink.LinkByName(loopbackName)
		if err != nil {
			return nil, false, fmt.Errorf("find %s: %w", loopbackName, err)
		}
		return link, false, nil
	}
	link, err = netlink.LinkByName(n.name)
	if err == nil {
		return link, false, nil
	}
	if !isLinkNotFound(err) {
		return nil, false, fmt.Errorf("find interface %s: %w", n.name, err)
	}
	err = netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: n.name}})
	switch {
	case err == nil || errors.Is(err, unix.EEXIST):
		// Created, or created by a concurrent instance since our lookup.
		created = err == nil
		link, err = netlink.LinkByName(n.name)
		if err != nil {
			return nil, false, fmt.Errorf("find interface %s after creating it: %w", n.name, err)
		}
		return link, created, nil
	case errors.Is(err, unix.EOPNOTSUPP):
		n.onLoopback = true
		n.logger.Warn("kernel has no dummy interface type; adding the listen IPs to lo instead",
			"interface", n.name, "fallback", loopbackName, "err", err)
		return n.link()
	default:
		return nil, false, fmt.Errorf("create dummy interface %s: %w", n.name, err)
	}
}

// remove deletes the dummy interface and takes the listen IPs' host routes
// (/32, /128) off lo, where the fallback put them. Missing pieces are fine.
func (n *nodeLink) remove() ([]string, error) {
	var changes []string
	link, err := netlink.LinkByName(n.name)
	switch {
	case err == nil && link.Type() == "dummy":
		if err := netlink.LinkDel(link); err != nil {
			return nil, fmt.Errorf("delete interface %s: %w", n.name, err)
		}
		changes = append(changes, fmt.Sprintf("deleted interface %s", n.name))
	case err == nil:
		n.logger.Warn("interface is not a dummy interface; leaving it", "interface", n.name, "type", link.Type())
	case !isLinkNotFound(err):
		return nil, fmt.Errorf("find interface %s: %w", n.name, err)
	}

	lo, err := netlink.LinkByName(loopbackName)
	if err != nil {
		return changes, fmt.Errorf("find %s: %w", loopbackName, err)
	}
	have, err := addrsOf(lo)
	if err != nil {
		return changes, err
	}
	var errs []error
	for _, ip := range n.ips {
		host := netip.PrefixFrom(ip, ip.BitLen())
		if !slices.Contains(have, host) {
			continue
		}
		if err := netlink.AddrDel(lo, hostAddr(ip)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", host, loopbackName, err))
			continue
		}
		changes = append(changes, fmt.Sprintf("removed %s from %s", host, loopbackName))
	}
	return changes, errors.Join(errs...)
}

func addrsOf(link netlink.Link) ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// hostAddr is ip as a single-address prefix; IPv6 skips duplicate address
// detection so the address is usable (bindable) at once.
func hostAddr(ip netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func isLinkNotFound(err error) bool {
	var notFound netlink.LinkNotFoundError
	return errors.As(err, &notFound)
}
