package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/ocispec"
	"github.com/runv-project/runv/errdefs"
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
	if err := bindMount(rootfs, target, true, unix.MS_PRIVATE); err != nil {
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
		if err := bindMount(src, shared, fi.IsDir(), propagation); err != nil {
			return nil, fmt.Errorf("share bind mount %s of container %q: %w", m.Destination, id, err)
		}
		hostEnforced, err := shareReadOnly(shared, m.Options, propagation)
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
// with the given propagation (unix.MS_PRIVATE or unix.MS_SLAVE).
func bindMount(src, target string, dir bool, propagation uintptr) error {
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
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, target, err)
	}
	// Mounts under the share never propagate back to the source; with MS_SLAVE, mounts
	// made on the host under the source later reach the share, and QEMU serves them.
	if err := unix.Mount("", target, "", propagation|unix.MS_REC, ""); err != nil {
		unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("set the propagation of %s: %w", target, err)
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

// shareReadOnly makes a read-only volume's bind in the share read-only on the host, so
// that QEMU's 9p server refuses writes with EROFS whatever the guest does: "ro" on the bind
// alone, "rro" on its submounts too. The guest sees the volume as one 9p file system, so a
// guest "ro" would cover the submounts that runc leaves writable: when the bind has
// submounts, or may get some later (a slave of its source), hostEnforced tells the caller
// to drop "ro" from the guest's mount and leave the bind's read-only state to the host.
// The guest's /proc/mounts then shows that volume "rw" (docs/kubernetes.md).
func shareReadOnly(shared string, options []string, propagation uintptr) (hostEnforced bool, err error) {
	kind := readOnlyOf(options)
	if kind == writable {
		return false, nil
	}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if kind == readOnlyRecursive {
		flags |= unix.AT_RECURSIVE
	}
	// mount_setattr sets read-only alone; a MS_REMOUNT would also reset nosuid, nodev and
	// noexec to what it is given.
	if err := unix.MountSetattr(-1, shared, uint(flags), &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return false, fmt.Errorf("make %s read-only: %w", shared, err)
	}
	if kind == readOnlyRecursive {
		return false, nil
	}
	if propagation == unix.MS_SLAVE {
		return true, nil
	}
	mounts, err := mountsUnder(shared)
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
	if err := UnmountUnder(dir); err != nil {
		return err
	}
	return RemoveUnmounted(dir)
}

// RemoveUnmounted removes dir recursively, but only when nothing is mounted at or below it:
// a bind-mounted rootfs that failed to unmount must never be deleted through the share.
func RemoveUnmounted(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("refusing to remove %s: %s is still mounted", dir, mounts[0])
	}
	return os.RemoveAll(dir)
}

// UnmountUnder detaches every mount at or below dir, deepest first. It is also how `runv
// delete` cleans up after a daemon that was killed.
func UnmountUnder(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

func mountsUnder(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// Deepest first, so parents are not busy.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
