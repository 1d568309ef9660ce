package main

import (
	"encoding/binary"
	"fmt"
)

// capability is a Linux capability number (linux/capability.h).
type capability uint

// capNetBindService lets a process bind ports below
// net.ipv4.ip_unprivileged_port_start.
const capNetBindService capability = 10

// xattrCapability is the extended attribute file capabilities live in; a
// layer tar carries it as a PAX record, which containerd and Docker set on
// the unpacked file.
const xattrCapability = "security.capability"

// fileCapabilityXattr encodes caps as the permitted set of a file
// capability with the effective bit (setcap's cap_...=+ep): struct
// vfs_cap_data, revision 2, little-endian. Revision 3 would add a root uid
// for user namespaces; revision 2 is what setcap writes outside one, and
// what a runtime maps into a user namespace itself.
func fileCapabilityXattr(caps ...capability) ([]byte, error) {
	const (
		revision2 = 0x02000000
		effective = 0x000001
	)
	var permitted [2]uint32 // capabilities 0-31, 32-63
	for _, c := range caps {
		if c >= 64 {
			return nil, fmt.Errorf("capability %d out of range", c)
		}
		permitted[c/32] |= 1 << (c % 32)
	}
	b := make([]byte, 0, 20)
	b = binary.LittleEndian.AppendUint32(b, revision2|effective)
	for _, p := range permitted {
		b = binary.LittleEndian.AppendUint32(b, p) // permitted
		b = binary.LittleEndian.AppendUint32(b, 0) // inheritable
	}
	return b, nil
}
