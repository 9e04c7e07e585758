package agentproto

import (
	"fmt"
	"os"
	"path/filepath"
)

// WarmupShareDir is the warm-up container's directory in a pooled VM's share (relative to
// the share): WARMUP puts the throwaway container's rootfs there, at "rootfs", so that it is
// on 9p as a pod's containers' are.
const WarmupShareDir = ".runv-warmup"

// MakeWarmupRootfs makes the warm-up container's rootfs at rootfs: the mountpoints of
// runc's default mounts, an /etc/passwd (the container's init reads HOME from it) and an
// empty /init, onto which the agent binds itself. The agent makes it, or, in a pooled VM's
// share, the host before WARMUP (WarmupRequest.HostRootfs): through the guest's 9p client
// under TCG its making and removal are 60-150 ms of a warm-up that no pod's container
// pays (a pod's rootfs is the host's).
func MakeWarmupRootfs(rootfs string) error {
	for _, d := range []string{"proc", "sys", "dev", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return fmt.Errorf("warm-up rootfs: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return fmt.Errorf("warm-up rootfs: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(rootfs, "init"), os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("warm-up rootfs: %w", err)
	}
	return f.Close()
}
