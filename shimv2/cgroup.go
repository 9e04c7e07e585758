package shimv2

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/hostcgroup"
	"github.com/runv-project/runv/logging"
)

// podCgroup is the pod's cgroup on the host, which the shim joins before its VM starts, so
// that QEMU and all its threads are charged there (what Kata calls sandbox_cgroup_only):
// the node's accounting and the pod's limits then cover the VM. It is the cgroupsPath's
// parent for a CRI sandbox (the pod-level cgroup the kubelet made; the sandbox's own leaf is
// a container of the pod), or the cgroupsPath itself for a container that starts its own pod.
type podCgroup struct {
	// done is closed once the shim is in every hierarchy it could join.
	done chan struct{}
	// joined are the cgroup directories the shim moved into, per hierarchy mount.
	joined []string
	// origin is the cgroup directory the shim came from, per hierarchy mount.
	origin map[string]string
	// made are directories the shim created (deepest last), removed when it leaves.
	made []string
}

// podCgroupPath is the host cgroup a pod's VM goes into ("" when the spec names none: no
// cgroupsPath, or a relative one). cgroupsPath is either a path (the cgroupfs driver's
// form) or systemd's slice:prefix:name, as containerd's CRI makes it when the pod's cgroup
// parent is a slice (the kubelet's systemd driver): the pod-level cgroup is then that
// slice, and a container's own cgroup the unit prefix-name.scope in it, at the paths
// systemd gives them (expandSlice). The shim joins these directories itself; it does not
// ask systemd for units. A malformed systemd form is refused.
func podCgroupPath(s *specs.Spec, criSandbox bool) (string, error) {
	if s.Linux == nil || s.Linux.CgroupsPath == "" {
		return "", nil
	}
	var p string
	switch cgroupsPath := s.Linux.CgroupsPath; {
	case strings.HasPrefix(cgroupsPath, "/"):
		p = filepath.Clean(cgroupsPath)
		if criSandbox {
			p = filepath.Dir(p)
		}
	case strings.Contains(cgroupsPath, ":"):
		var err error
		if p, err = systemdCgroupPath(cgroupsPath, criSandbox); err != nil {
			return "", fmt.Errorf("linux.cgroupsPath %q: %w", cgroupsPath, err)
		}
	}
	if p == "/" {
		return "", nil
	}
	return p, nil
}

// systemdCgroupPath is the cgroup path of systemd's form slice:prefix:name: the slice's
// for a CRI sandbox, else the container's unit's (prefix-name.scope in the slice, or name
// itself when it is a slice).
func systemdCgroupPath(cgroupsPath string, criSandbox bool) (string, error) {
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 || parts[2] == "" {
		return "", fmt.Errorf("want a path, or systemd's form slice:prefix:name: %w", errdefs.ErrInvalidArgument)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice" // as runc's systemd driver
	}
	dir, err := expandSlice(slice)
	switch {
	case err != nil || criSandbox:
		return dir, err
	case strings.HasSuffix(name, ".slice"):
		// The container's unit is a slice: its name says where systemd puts it.
		return expandSlice(name)
	}
	unit := name + ".scope"
	if prefix != "" {
		unit = prefix + "-" + unit
	}
	if strings.Contains(unit, "/") {
		return "", fmt.Errorf("the unit name %q has a slash: %w", unit, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(dir, unit), nil
}

// expandSlice is the cgroup path systemd gives a slice unit: each dash in its name is a
// level of the hierarchy ("kubepods-burstable-pod1.slice" is
// /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice; "-.slice" is the
// root).
func expandSlice(slice string) (string, error) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || strings.Contains(name, "/") {
		return "", fmt.Errorf("%q is not a slice unit name (name.slice, no slash): %w", slice, errdefs.ErrInvalidArgument)
	}
	if name == "-" {
		return "/", nil
	}
	if name == "" || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", fmt.Errorf("slice %q: an empty level in its name (a leading, trailing or double dash): %w", slice, errdefs.ErrInvalidArgument)
	}
	var path, level string
	for _, part := range strings.Split(name, "-") {
		if level != "" {
			level += "-"
		}
		level += part
		path += "/" + level + ".slice"
	}
	return path, nil
}

// joinPodCgroup starts moving the shim into the pod's cgroup in every hierarchy it is in,
// creating the directories that are missing; wait returns once it is done. A hierarchy it
// cannot join (cpuset without cpus, say) is logged after the others were joined; nothing
// is undone then.
func joinPodCgroup(ctx context.Context, path string) *podCgroup {
	pc := &podCgroup{done: make(chan struct{}), origin: map[string]string{}}
	go func() {
		defer close(pc.done)
		if err := pc.join(path); err != nil {
			logging.G(ctx).Warn("the VM is not in the pod's cgroup in every hierarchy", "cgroup", path, "error", err)
		}
	}()
	return pc
}

// wait waits until the shim joined the pod's cgroup.
func (pc *podCgroup) wait() { <-pc.done }

func (pc *podCgroup) join(path string) error {
	hierarchies, err := hostcgroup.Self()
	if err != nil && len(hierarchies) == 0 {
		return err
	}
	errs := []error{err} // a read cut short: the hierarchies read before it are joined
	for _, h := range hierarchies {
		mount := h.Mount
		dir := filepath.Join(mount, path)
		if err := pc.mkdirAll(mount, dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := writePid(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		pc.origin[mount] = filepath.Join(mount, h.Path)
		pc.joined = append(pc.joined, dir)
	}
	return errors.Join(errs...)
}

// mkdirAll creates dir and its missing parents below mount, recording them; a new cpuset
// cgroup gets its parent's cpus and mems (it cannot take a process without them).
func (pc *podCgroup) mkdirAll(mount, dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if parent := filepath.Dir(dir); parent != mount {
		if err := pc.mkdirAll(mount, parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create the pod's cgroup: %w", err)
	}
	pc.made = append(pc.made, dir)
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		if b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f)); err == nil {
			os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
	}
	return nil
}

func writePid(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("join the pod's cgroup %s: %w", dir, err)
	}
	return nil
}

// leave moves the shim back where it came from (its VM is gone) and removes the
// directories it created.
func (pc *podCgroup) leave() error {
	pc.wait()
	var errs []error
	for _, origin := range pc.origin {
		if err := writePid(origin); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(pc.made) - 1; i >= 0; i-- {
		if err := os.Remove(pc.made[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove the pod's cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// add moves another process (a VM from the pool, started by its holder rather than by the
// shim) into the pod's cgroup, once the shim joined it. Moving a process that is there
// already does nothing.
func (pc *podCgroup) add(pid int) error {
	pc.wait()
	var errs []error
	for _, dir := range pc.joined {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("move process %d into the pod's cgroup %s: %w", pid, dir, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroupDirs removes the cgroup directory path in every hierarchy, for a shim that
// died without leaving it (SIGKILL): rmdir only takes an empty cgroup, so the dead shim's
// VM, which follows it out (Pdeathsig), gets a few seconds to go.
func removeCgroupDirs(path string) error {
	dirs, _ := filepath.Glob(filepath.Join(hostcgroup.Root, "*", path))
	dirs = append(dirs, filepath.Join(hostcgroup.Root, path))
	var errs []error
	for _, d := range dirs {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove the pod's cgroup %s: %w", d, err))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// vmOverheadMiB is what a pod's VM costs the host beyond its guest memory: QEMU measured
// 164.5 MiB PSS for a 128 MiB guest, the shim 19.8 MiB (docs/kubernetes.md), rounded up.
const vmOverheadMiB = 64

// minGuestMiB is the smallest guest runv boots (its kernel and agent need it).
const minGuestMiB = 64

// podMemoryLimit is the memory limit of the pod's host cgroup at path, in bytes (0: none):
// cgroup v2's memory.max, or v1's memory.limit_in_bytes.
func podMemoryLimit(path string) uint64 {
	for _, f := range []string{
		filepath.Join(hostcgroup.Root, path, "memory.max"),
		filepath.Join(hostcgroup.Root, "unified", path, "memory.max"),
		filepath.Join(hostcgroup.Root, "memory", path, "memory.limit_in_bytes"),
	} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || v >= 1<<62 { // "max", or v1's page-rounded "unlimited"
			continue
		}
		return v
	}
	return 0
}

// guestMiBUnder sizes a pod's guest memory so that the VM fits under the pod's cgroup limit
// (bytes, 0: none): at most wantMiB, and the limit less the VM's overhead; never below
// minGuestMiB. fits is false when even that does not fit.
func guestMiBUnder(wantMiB int, limit uint64) (mib int, fits bool) {
	if limit == 0 {
		return wantMiB, true
	}
	room := int(limit>>20) - vmOverheadMiB
	if room < minGuestMiB {
		return minGuestMiB, false
	}
	return min(wantMiB, room), true
}
