package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// An exec's program named by its PATH search's result, as the host sees the container's
// rootfs: the guest's search walks every PATH entry before the program's over 9p, a round
// trip to QEMU per probe under TCG (five misses for `true` with runc's default PATH, 1-4
// ms of every exec), where the host answers from its page cache. The exec helper checks
// the hinted path as it would have checked it in its search and falls back to the full
// search if it does not qualify. What stays for the host to get right: that no entry
// before the hint's holds the program in the guest's view. The share shows the guest the
// host's files (security_model=none: their modes too), so only mounts can differ:
// programHint gives no hint when a mount of the spec (or one the agent adds: /dev, /sys,
// /etc/resolv.conf) is, contains or is inside one of the directories searched, compared
// both as written and with symlinks resolved in the rootfs; and none at all for a
// container one of whose processes could have mounted something itself (mayMount).
// docs/performance.md, "`runv exec`, stop 13".

// agentMounts are the destinations the agent may mount in a container beyond its spec's
// (api/convert/spec.go: /dev tmpfs and device binds, sysfs, resolv.conf).
var agentMounts = []string{"/dev", "/sys", "/etc/resolv.conf"}

// programHint is where the exec helper's search of p's PATH for its program ends, in the
// rootfs (a host path) of a container with the given mount destinations: the PATH entry
// and the name as the helper joins them, or "" when there is nothing to hint: the program
// is a path, there is no PATH, an entry searched is relative or under a mount, or it is
// not found (the guest then says so, in its words).
func programHint(rootfs string, mountDests []string, p *specs.Process) string {
	if p == nil || len(p.Args) == 0 || p.Args[0] == "" || strings.Contains(p.Args[0], "/") {
		return ""
	}
	name := p.Args[0]
	path := ""
	for _, e := range p.Env { // the last PATH wins, as in the helper's environment
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	if path == "" {
		return ""
	}
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(root)
	rootPath, err := readlinkFd(root)
	if err != nil {
		return ""
	}
	in := rootDir{fd: root, path: rootPath}
	mounts := make([]string, 0, 2*(len(mountDests)+len(agentMounts)))
	for _, m := range append(append([]string{}, mountDests...), agentMounts...) {
		if !filepath.IsAbs(m) {
			return "" // the guest resolves it against the cwd: no telling where it lands
		}
		mounts = append(mounts, filepath.Clean(m), in.resolve(m))
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" || !filepath.IsAbs(dir) {
			return ""
		}
		if overlapsAny(mounts, filepath.Clean(dir)) || overlapsAny(mounts, in.resolve(dir)) {
			return ""
		}
		candidate := dir + "/" + name // as the helper's look_path joins them
		switch executable, err := executableInRoot(root, candidate); {
		case err != nil:
			return "" // not sure what the guest would find
		case executable:
			return candidate
		}
	}
	return ""
}

// overlapsAny reports whether dir is one of paths, inside one, or holds one.
func overlapsAny(paths []string, dir string) bool {
	for _, p := range paths {
		if p == dir || strings.HasPrefix(dir, strings.TrimSuffix(p, "/")+"/") || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/") {
			return true
		}
	}
	return false
}

// rootDir is the container's rootfs: an O_PATH descriptor and the host path it resolves to.
type rootDir struct {
	fd   int
	path string
}

// resolve is path with the symlinks of its longest existing prefix resolved inside the
// root (as the guest resolves it in the container), the rest as written.
func (root rootDir) resolve(path string) string {
	rest := ""
	for p := filepath.Clean(path); ; {
		fd, err := unix.Openat2(root.fd, p, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
		if err == nil {
			real, rerr := readlinkFd(fd)
			unix.Close(fd)
			if rerr != nil {
				return filepath.Clean(path)
			}
			inRoot := "/" + strings.TrimPrefix(strings.TrimPrefix(real, root.path), "/")
			return filepath.Join(inRoot, rest)
		}
		if p == "/" {
			return filepath.Clean(path)
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = filepath.Dir(p)
	}
}

// readlinkFd is the path the kernel has for the open descriptor fd.
func readlinkFd(fd int) (string, error) {
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
}

// executableInRoot tells whether path, resolved inside root, is what the helper's search
// could take: a file that is not a directory, with an execute bit (the guest's access
// check, as the process's user, takes no more than that). Missing is false, no error.
func executableInRoot(root int, path string) (bool, error) {
	fd, err := unix.Openat2(root, path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, err
	}
	return st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Mode&0o111 != 0, nil
}

// mayMount reports whether process p may change its container's mounts: it keeps
// CAP_SYS_ADMIN in its bounding set (or its capabilities are left as they are: all).
// Mounts it makes in a user namespace of its own are in a mount namespace of its own too.
func mayMount(p *specs.Process) bool {
	if p == nil || p.Capabilities == nil {
		return true
	}
	for _, c := range p.Capabilities.Bounding {
		if c == "CAP_SYS_ADMIN" {
			return true
		}
	}
	return false
}
