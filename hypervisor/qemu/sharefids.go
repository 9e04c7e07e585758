package qemu

import (
	"context"
	"fmt"
	"strings"
)

// A template saved with the pod share mounted spares every clone the guest's 9p mount: the
// 9p client's session, its superblock and its backing device, which a clone's QEMU
// translates anew (~25 ms of a template pod's start under TCG, docs/performance.md). QEMU
// refuses to migrate a VM whose 9p export is mounted, because the server's fids are not in
// the migration stream. runv's QEMU (qemu-build/patches/0001-9pfs-migrate-fids.patch) has
// a device property that saves the fids which only name a path (none may be open) and makes
// them again in the destination, against its own export directory.

// shareFidsProp is that property of virtio-9p-device and virtio-9p-pci.
const shareFidsProp = "x-migrate-fids"

// keepShareProp is the 9p device's option that asks for it, or nothing.
func keepShareProp(keep bool) string {
	if keep {
		return "," + shareFidsProp + "=on"
	}
	return ""
}

// keepsShareFids reports whether qemu's 9p device for machine has shareFidsProp. Another
// QEMU (Debian's) has not: its templates are then saved without the share, as before.
func keepsShareFids(ctx context.Context, qemu, machine string) (bool, error) {
	out, err := qemuHelp(ctx, qemu, "-device", virtioDevice("virtio-9p", machine)+",help")
	if err != nil {
		return false, fmt.Errorf("list the 9p device's properties: %w", err)
	}
	return hasDeviceProperty(out, shareFidsProp), nil
}

// hasDeviceProperty reads `-device TYPE,help`, whose property lines look like
//
//	x-migrate-fids=<bool>  - (default: false)
func hasDeviceProperty(help, name string) bool {
	for _, line := range strings.Split(help, "\n") {
		if prop, _, ok := strings.Cut(strings.TrimSpace(line), "="); ok && prop == name {
			return true
		}
	}
	return false
}
