package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/mounts"
)

// QEMU runs in a mount namespace of its own (the pattern of Firecracker's jailer) whose
// root is a small read-only tmpfs holding only what it needs, each at its host path (so
// QEMU's command line, errors and `ps` name the host's files):
//
//   - the VM's directory: QMP and channel sockets, pid file (read-write);
//   - the pod's 9p share, with what is mounted under it, as a slave of the host's: what the
//     pod daemon mounts under the share after QEMU started (rootfs, volumes) reaches QEMU,
//     and nothing mounted on QEMU's side could reach the host;
//   - the kernel and initrd, read-only (a clone has neither: its RAM holds the booted guest);
//   - a template's RAM file: the directory a template writes it into, the file a clone maps;
//   - /dev/null, /dev/urandom, /dev/net/tun, and /dev/kvm under KVM only;
//   - a /proc that shows QEMU itself (9p needs /proc/self/fd) and no root process;
//   - the QEMU binary, its loader and libraries, its firmware and module directories,
//     read-only (symlinks on the way reproduced).
//
// No /sys, /etc, /home, /root, /var of the host, nor anything else of /tmp or /run:
// a guest that takes QEMU over finds nothing else to read or write, whatever QEMU's
// capabilities. The namespace dies with QEMU, so nothing of it outlives the VM. It is
// built in the thread that forks QEMU (startProcess): Go cannot switch a whole process's
// mount namespace once threads run, but one locked thread can unshare its own, and a child
// forked from it inherits it.

// jail is the plan of one QEMU's mount namespace.
type jail struct {
	mounts   []jailMount
	symlinks []jailSymlink
	// share is the host's share directory: it must be (in) a shared mount so that mounts
	// made under it later propagate to QEMU's copy (propagateShare). Empty: no pod will use
	// this VM's share (a template).
	share string
}

// jailMount is a bind mount of host path src at dst in the jail.
type jailMount struct {
	src, dst  string
	dir       bool // else a file (or a device node)
	recursive bool // with the mounts under src
	writable  bool
	exec      bool // the binary, libraries and modules are mapped executable
	device    bool
}

// jailSymlink is a symlink the jail reproduces from the host.
type jailSymlink struct{ path, target string }

// vmJail plans the jail of a VM booted from cfg. memFile is a template's RAM file
// (memShared: the template writes it) or a clone's.
func vmJail(cfg hypervisor.Config, accel, memFile string, memShared, incoming bool, sys hostFiles) (*jail, error) {
	j := &jail{}
	var mounts []jailMount
	mounts = append(mounts,
		jailMount{src: cfg.Dir, dir: true, writable: true},
		jailMount{src: cfg.ShareDir, dir: true, recursive: true, writable: true})
	if !memShared {
		j.share = cfg.ShareDir
	}
	if !incoming {
		mounts = append(mounts, jailMount{src: cfg.Kernel}, jailMount{src: cfg.Initrd})
	}
	switch {
	case memFile != "" && memShared:
		// The template creates its RAM file: it gets the (template's own) directory.
		mounts = append(mounts, jailMount{src: filepath.Dir(memFile), dir: true, writable: true})
	case memFile != "":
		// QEMU 7.2 opens the file read-write even for a private mapping.
		mounts = append(mounts, jailMount{src: memFile, writable: true})
	}
	devices := []string{"/dev/null", "/dev/urandom", "/dev/net/tun"}
	if accel == hypervisor.AccelKVM {
		devices = append(devices, "/dev/kvm")
	}
	for _, d := range devices {
		mounts = append(mounts, jailMount{src: d, writable: true, device: true})
	}
	for _, d := range sys.dirs {
		// Modules are mapped executable; firmware is only read, but the directories mix.
		mounts = append(mounts, jailMount{src: d, dir: true, exec: true})
	}
	// Each goes where its path leads once the symlinks on the way are reproduced; a
	// directory before what is mounted inside it (a pooled VM's share is in its directory).
	for _, m := range mounts {
		p, err := j.reproduce(m.src)
		if err != nil {
			return nil, err
		}
		m.src, m.dst = p, p
		j.mounts = append(j.mounts, m)
	}
	files, err := j.bindLibraryDirs(sys.files, loaderSearchDirs)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		j.mounts = append(j.mounts, jailMount{src: f, dst: f, exec: true})
	}
	sort.SliceStable(j.mounts, func(a, b int) bool {
		return strings.Count(j.mounts[a].dst, "/") < strings.Count(j.mounts[b].dst, "/")
	})
	return j, nil
}

// bindLibraryDirs plans one read-only bind of each of the library directories libDirs (the
// loader's, loaderSearchDirs) that holds some of files, instead of one bind per library:
// QEMU maps 49 libraries from /usr/lib/x86_64-linux-gnu on Debian, and each file bind cost
// a launch its path's resolution and 5 system calls (docs/performance.md, "The host's
// share, stop 16"). The directory holds only the host's shared libraries, bound read-only,
// nosuid, nodev. It returns, resolved, the files that are not in such a directory (QEMU's
// binary, a library found through ld.so.cache elsewhere). A bound directory shows the
// host's own symlinks in it: none of those is recreated.
func (j *jail) bindLibraryDirs(files, libDirs []string) ([]string, error) {
	isLibDir := map[string]bool{}
	for _, d := range libDirs {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			isLibDir[r] = true
		}
	}
	resolvedDirs := map[string]string{}
	var outside, bound []string
	for _, f := range files {
		dir, ok := resolvedDirs[filepath.Dir(f)]
		if !ok {
			var err error
			if dir, err = j.reproduce(filepath.Dir(f)); err != nil {
				return nil, err
			}
			resolvedDirs[filepath.Dir(f)] = dir
		}
		if !isLibDir[dir] || !staysIn(dir, filepath.Base(f)) {
			p, err := j.reproduce(f)
			if err != nil {
				return nil, err
			}
			if !slices.Contains(outside, p) {
				outside = append(outside, p)
			}
			continue
		}
		if !slices.Contains(bound, dir) {
			bound = append(bound, dir)
			j.mounts = append(j.mounts, jailMount{src: dir, dst: dir, dir: true, exec: true})
		}
	}
	inBound := func(p string) bool {
		return slices.ContainsFunc(bound, func(d string) bool { return under(p, d) })
	}
	j.symlinks = slices.DeleteFunc(j.symlinks, func(s jailSymlink) bool { return inBound(s.path) })
	return slices.DeleteFunc(outside, inBound), nil
}

// staysIn reports whether dir/name is a file of dir itself: not a symlink, or symlinks to
// names in dir only (as a library's soname links are).
func staysIn(dir, name string) bool {
	for links := 0; links <= maxSymlinks; links++ {
		p := filepath.Join(dir, name)
		st, err := os.Lstat(p)
		if err != nil {
			return false
		}
		if st.Mode()&os.ModeSymlink == 0 {
			return true
		}
		if name, err = os.Readlink(p); err != nil || strings.Contains(name, "/") {
			return false
		}
	}
	return false
}

// under reports whether path p is dir or inside it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// maxSymlinks bounds the symlinks followed resolving one path, as the kernel does.
const maxSymlinks = 40

// reproduce resolves host path p component by component, noting every symlink met on the
// way (at its path, with its target as written) for the jail to recreate, and returns p
// with no symlink left: where the jail mounts the file.
func (j *jail) reproduce(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("jail: %s is not an absolute path", p)
	}
	resolved := "/"
	rest := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	for links := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		st, err := os.Lstat(next)
		if err != nil {
			return "", fmt.Errorf("jail: %s: %w", p, err)
		}
		if st.Mode()&os.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("jail: %s: %w", p, unix.ELOOP)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", fmt.Errorf("jail: %s: %w", p, err)
		}
		j.addSymlink(next, target)
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(strings.Trim(target, "/"), "/"), rest...)
	}
	return resolved, nil
}

func (j *jail) addSymlink(path, target string) {
	for _, s := range j.symlinks {
		if s.path == path {
			return
		}
	}
	j.symlinks = append(j.symlinks, jailSymlink{path: path, target: target})
}

// jailRootOptions: the root holds directories, empty mount points and symlinks only.
const jailRootOptions = "mode=0755,size=256k,nr_inodes=4096"

// enter moves the calling thread into a new mount namespace built from j and makes it the
// thread's root. mountpoint is a directory of the host (the VM's directory) over which the
// jail's root is built in the new namespace, out of the host's sight. The thread must be
// locked and must never run anything else afterwards: on error too, it is left half-way.
func (j *jail) enter(mountpoint string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
		return fmt.Errorf("jail: new mount namespace: %w", err)
	}
	// Nothing done here may reach the host; the host's mounts still reach us.
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("jail: make the mounts slaves: %w", err)
	}
	// Clone every source first: the root is built over the VM's directory, which may hold
	// one of them (a pooled VM's share).
	fds := make([]int, 0, len(j.mounts))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, m := range j.mounts {
		fd, err := cloneMount(m)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	if err := unix.Mount("runv-jail", mountpoint, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, jailRootOptions); err != nil {
		return fmt.Errorf("jail: root tmpfs on %s: %w", mountpoint, err)
	}
	for _, s := range j.symlinks {
		p := filepath.Join(mountpoint, s.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
		if err := os.Symlink(s.target, p); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	}
	for i, m := range j.mounts {
		target := filepath.Join(mountpoint, m.dst)
		if err := makeMountPoint(target, m.dir); err != nil {
			return fmt.Errorf("jail: mount point for %s: %w", m.src, err)
		}
		if err := unix.MoveMount(fds[i], "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("jail: mount %s on %s: %w", m.src, m.dst, err)
		}
	}
	if err := mountProc(filepath.Join(mountpoint, "proc")); err != nil {
		return err
	}
	// The usual way into a new root without a directory for the old one: the old root ends
	// up stacked on the new one, and is detached with everything under it.
	if err := unix.Chdir(mountpoint); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("jail: pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("jail: detach the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("jail: make the root read-only: %w", err)
	}
	return nil
}

// jailProcOptions: QEMU's 9p server changes modes through /proc/self/fd (an O_PATH
// descriptor cannot fchmod), so the jail has a /proc, but one that shows processes only
// (subset=pid: no /proc/sys, no kernel tables), and of those only the ones QEMU's user
// could ptrace anyway (hidepid=invisible): no root process, not the pod daemon.
const jailProcOptions = "hidepid=invisible,subset=pid"

func mountProc(target string) error {
	if err := os.Mkdir(target, 0o555); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Mount("proc", target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, jailProcOptions); err != nil {
		return fmt.Errorf("jail: mount /proc (%s): %w", jailProcOptions, err)
	}
	return nil
}

// cloneMount returns a detached copy of m's source with m's restrictions.
func cloneMount(m jailMount) (int, error) {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
	if m.recursive {
		flags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, m.src, flags)
	if err != nil {
		return -1, fmt.Errorf("jail: clone %s: %w%s", m.src, err, kernelHint(err))
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID}
	if !m.writable {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if !m.exec {
		attr.Attr_set |= unix.MOUNT_ATTR_NOEXEC
	}
	if !m.device {
		// A device node in a container's rootfs is the guest's to create, never QEMU's to
		// open on the host.
		attr.Attr_set |= unix.MOUNT_ATTR_NODEV
	}
	setFlags := uint(unix.AT_EMPTY_PATH)
	if m.recursive {
		setFlags |= unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(fd, "", setFlags, &attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("jail: restrict %s: %w%s", m.src, err, kernelHint(err))
	}
	return fd, nil
}

// kernelHint says what to do when the kernel lacks the new mount API.
func kernelHint(err error) string {
	if errors.Is(err, unix.ENOSYS) {
		return " (QEMU's mount namespace needs Linux 5.12 or later: open_tree, move_mount, mount_setattr)"
	}
	return ""
}

func makeMountPoint(p string, dir bool) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if dir {
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return nil
	}
	// mknod, not an open for writing: while a descriptor open for writing exists, the
	// root cannot be remounted read-only (EBUSY), and a fork by any other thread of this
	// process (another VM's launch) copies the descriptor table and holds the file open
	// until its exec.
	if err := unix.Mknod(p, unix.S_IFREG|0o644, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// propagateShare makes mounts made under the host directory dir from now on propagate to
// the copies of dir in QEMU's jail. Propagation flows only from a shared mount: if the
// mount holding dir is shared (a systemd host's), nothing is needed; else dir is bound on
// itself and the bind made shared (QEMU's copy is then its slave). The returned release
// detaches that bind wherever it is then (a pooled VM's share is moved onto its pod's,
// factory.Cache), and does nothing if it is gone already (the pod's cleanup detaches it).
func propagateShare(dir string) (release func(), err error) {
	shared, err := inSharedMount(dir)
	if err != nil {
		return nil, fmt.Errorf("share %s: %w", dir, err)
	}
	if shared {
		return func() {}, nil
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind share %s on itself: %w", dir, err)
	}
	// Held for release: the mount is found through the descriptor, never by a path or a
	// mount id that may name another mount by then.
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return nil, fmt.Errorf("open share %s: %w", dir, err)
	}
	release = func() {
		unix.Unmount("/proc/self/fd/"+strconv.Itoa(fd), unix.MNT_DETACH)
		unix.Close(fd)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		release()
		return nil, fmt.Errorf("make share %s a shared mount: %w", dir, err)
	}
	return release, nil
}

// inSharedMount reports whether the mount holding dir is shared (has peers or could have).
func inSharedMount(dir string) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_MNT_ID, &stx); err != nil {
		return false, err
	}
	table, err := mounts.Table()
	if err != nil {
		return false, err
	}
	id := strconv.FormatUint(stx.Mnt_id, 10)
	for _, m := range table {
		if m.ID == id {
			return slices.ContainsFunc(m.Optional, func(o string) bool { return strings.HasPrefix(o, "shared:") }), nil
		}
	}
	return false, fmt.Errorf("mount %s of %s not in /proc/self/mountinfo", id, dir)
}
