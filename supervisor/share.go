package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/ocispec"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/mounts"
)

// shareContainer makes a container's rootfs and bind-mount sources visible to the guest by
// bind-mounting them under the pod's 9p share:
//
//	<share>/<id>/rootfs        the bundle's root.path
//	<share>/<id>/volumes/<n>/<name>   the source of the n-th bind mount of the spec, under
//	                                  its own name (the mount's root in the container's
//	                                  mountinfo ends with it, as with runc)
//
// It returns the spec the guest gets: bind sources rewritten to guest paths, hooks removed
// (they run on the host). On error nothing stays mounted.
func shareContainer(shareDir, id, bundle string, spec *specs.Spec) (guest *specs.Spec, err error) {
	// The bundle's relative paths were resolved by its loader (oci.LoadBundle), the one place
	// that does: a relative one here is a caller's mistake, not a path to guess at.
	if spec.Root == nil || !filepath.IsAbs(spec.Root.Path) {
		return nil, fmt.Errorf("container %q: root.path must be an absolute path (load the bundle with oci.LoadBundle): %w", id, errdefs.ErrInvalidArgument)
	}
	rootfs := spec.Root.Path
	dir := filepath.Join(shareDir, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create share directory of container %q: %w", id, err)
	}
	defer func() {
		if err != nil {
			unshareContainer(shareDir, id)
		}
	}()
	target := filepath.Join(dir, "rootfs")
	if err := bindMount(rootfs, target, true, unix.MS_PRIVATE, writable); err != nil {
		return nil, fmt.Errorf("share rootfs of container %q: %w", id, err)
	}

	g := *spec
	g.Hooks = nil
	g.Mounts = make([]specs.Mount, len(spec.Mounts))
	copy(g.Mounts, spec.Mounts)
	for i, m := range g.Mounts {
		if !ocispec.IsBindMount(m) {
			continue
		}
		src := m.Source
		if !filepath.IsAbs(src) {
			return nil, fmt.Errorf("bind mount %d (%s → %s) of container %q: the source must be an absolute path (load the bundle with oci.LoadBundle): %w", i, m.Source, m.Destination, id, errdefs.ErrInvalidArgument)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("bind mount %d (%s → %s) of container %q: source: %w: %w", i, m.Source, m.Destination, id, err, errdefs.ErrInvalidArgument)
		}
		rel := path.Join(id, "volumes", strconv.Itoa(i), volumeName(src))
		shared := filepath.Join(shareDir, rel)
		propagation := sharePropagation(m.Options)
		readOnly := readOnlyOf(m.Options)
		if err := bindMount(src, shared, fi.IsDir(), propagation, readOnly); err != nil {
			return nil, fmt.Errorf("share bind mount %s of container %q: %w", m.Destination, id, err)
		}
		hostEnforced, err := readOnlyHostEnforced(shared, readOnly, propagation)
		if err != nil {
			return nil, fmt.Errorf("share read-only bind mount %s of container %q: %w", m.Destination, id, err)
		}
		g.Mounts[i].Source = path.Join(agentproto.SharePath, rel)
		if hostEnforced {
			g.Mounts[i].Options = withoutOption(m.Options, "ro")
		}
	}
	return &g, nil
}

// volumeName is the name a bind-mount source is shared under: its base name.
func volumeName(src string) string {
	b := filepath.Base(filepath.Clean(src))
	if b == "/" || b == "." || b == ".." {
		return "root"
	}
	return b
}

// bindMount creates target (a directory or an empty file) and binds src onto it recursively,
// with the given propagation (unix.MS_PRIVATE or unix.MS_SLAVE), read-only as asked.
func bindMount(src, target string, dir bool, propagation uintptr, readOnly readOnlyKind) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if dir {
		if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	} else {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	// The bind gets its propagation and read-only state before it is attached: attaching
	// it propagates a copy to QEMU's share (QEMU's mount namespace is a slave of the host's
	// share), and that copy keeps what the bind was then: made while the bind was still a
	// peer of a shared source, it would stay the source's slave (showing the guest what the
	// host mounts there later); made writable, it would stay writable.
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, target, err)
	}
	defer unix.Close(fd)
	// Mounts under the share never propagate back to the source; with MS_SLAVE, mounts
	// made on the host under the source later reach the share, and QEMU serves them.
	attr := unix.MountAttr{Propagation: uint64(propagation)}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("set the propagation of the bind of %s: %w", src, err)
	}
	if readOnly != writable {
		// mount_setattr sets read-only alone (a remount would also reset nosuid, nodev and
		// noexec): on the bind alone for "ro", on its submounts too for "rro".
		flags := uint(unix.AT_EMPTY_PATH)
		if readOnly == readOnlyRecursive {
			flags |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(fd, "", flags, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make the bind of %s read-only: %w", src, err)
		}
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, target, err)
	}
	return nil
}

// sharePropagation is the propagation of a volume's bind in the share: a volume asking for
// host-to-container propagation (rslave, rshared: Kubernetes' HostToContainer and
// Bidirectional) is a slave of its source, so that what the host mounts under the source
// after the container started reaches the guest; others are private. Propagation from the
// container back to the host cannot cross the VM.
func sharePropagation(options []string) uintptr {
	for _, o := range options {
		switch o {
		case "rslave", "slave", "rshared", "shared":
			return unix.MS_SLAVE
		}
	}
	return unix.MS_PRIVATE
}

// readOnlyKind is how a bind mount asks to be read-only.
type readOnlyKind int

const (
	writable readOnlyKind = iota
	// readOnlyTop ("ro"): the bind itself is read-only, its submounts keep their own
	// flags, as runc does (and CRI asks by default: recursive_read_only off).
	readOnlyTop
	// readOnlyRecursive ("rro"): the bind and every submount are read-only.
	readOnlyRecursive
)

func readOnlyOf(options []string) readOnlyKind {
	kind := writable
	for _, o := range options {
		switch o {
		case "rro":
			return readOnlyRecursive
		case "ro":
			kind = readOnlyTop
		case "rw":
			kind = writable
		}
	}
	return kind
}

// readOnlyHostEnforced tells whether a read-only volume's bind in the share (made
// read-only on the host by bindMount, so that QEMU's 9p server refuses writes with EROFS
// whatever the guest does: "ro" on the bind alone, "rro" on its submounts too) must be left
// to the host alone. The guest sees the volume as one 9p file system, so a guest "ro" would
// cover the submounts that runc leaves writable: when the bind has submounts, or may get
// some later (a slave of its source), the caller drops "ro" from the guest's mount. The
// guest's /proc/mounts then shows that volume "rw" (docs/kubernetes.md).
func readOnlyHostEnforced(shared string, kind readOnlyKind, propagation uintptr) (bool, error) {
	if kind != readOnlyTop {
		return false, nil
	}
	if propagation == unix.MS_SLAVE {
		return true, nil
	}
	mounts, err := mounts.Under(shared)
	if err != nil {
		return false, err
	}
	return len(mounts) > 1, nil
}

func withoutOption(options []string, drop string) []string {
	out := make([]string, 0, len(options))
	for _, o := range options {
		if o != drop {
			out = append(out, o)
		}
	}
	return out
}

// unshareContainer undoes shareContainer.
func unshareContainer(shareDir, id string) error {
	dir := filepath.Join(shareDir, id)
	if err := mounts.UnmountUnder(dir); err != nil {
		return err
	}
	return mounts.RemoveUnmounted(dir)
}
