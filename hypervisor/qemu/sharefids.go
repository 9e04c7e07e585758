package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"

	"github.com/runv-project/runv/hypervisor"
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

// shareFidsSupport caches each QEMU binary's answer, by path and 9p device type.
var shareFidsSupport sync.Map // "qemu\x00device" -> bool

// keepsShareFids reports whether qemu's 9p device for machine has shareFidsProp. Another
// QEMU (Debian's) has not: its templates are then saved without the share, as before.
func keepsShareFids(ctx context.Context, qemu, machine string) (bool, error) {
	device := "virtio-9p-pci"
	if machine == hypervisor.MachineMicroVM {
		device = "virtio-9p-device"
	}
	key := qemu + "\x00" + device
	if v, ok := shareFidsSupport.Load(key); ok {
		return v.(bool), nil
	}
	out, err := exec.CommandContext(ctx, qemu, "-device", device+",help").Output()
	if err != nil {
		return false, fmt.Errorf("list the 9p device's properties: %s -device %s,help: %w", qemu, device, err)
	}
	kept := hasDeviceProperty(string(out), shareFidsProp)
	shareFidsSupport.Store(key, kept)
	return kept, nil
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
