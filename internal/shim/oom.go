package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// A client that watches a container for OOM kills watches the host cgroup the runtime put
// the container in (containerd's runc shim: memory.oom_control's eventfd on cgroup v1,
// memory.events' oom_kill on v2; CRI's reason OOMKilled comes from there). With runv that
// cgroup holds the container's stand-ins, and the OOM kill happened in the guest. So the
// stand-in of a process the guest's OOM killer ended has itself OOM-killed in the same
// cgroup: it lowers the cgroup's memory limit to just above what the cgroup uses and
// allocates locked memory until the host's OOM killer ends it. The kill is a real one in
// that cgroup, counted and notified by the kernel as any other, and the stand-in dies of
// SIGKILL: exit 137, as the process did.
//
// In the container's own cgroup rather than a child of it: cgroup v1 notifies an OOM to
// the cgroup that ran out of memory and its descendants, never to its ancestors (and on
// v2 a child with a limit of its own would need the container's cgroup emptied of its
// stand-ins, the no-internal-process rule). The container is over by then, and the cgroup
// is removed with it.

const (
	// oomHeadroom is what the limit leaves above the cgroup's usage: a few chunks, so
	// that the write is accepted, and the allocation reaches it at once.
	oomHeadroom = 4 << 20
	oomChunk    = 1 << 20
	// oomMaxAlloc bounds the allocation: a stand-in that is still alive past it (a
	// cgroup whose OOM killer is off, a limit that did not hold) gives up.
	oomMaxAlloc = 256 << 20
)

// memoryCgroup is the memory controller's files of the stand-in's own cgroup.
type memoryCgroup struct {
	dir          string
	limit, usage string // file names
}

func ownMemoryCgroup() (memoryCgroup, error) {
	if cgroups.IsCgroup2UnifiedMode() {
		m, err := cgroups.ParseCgroupFile("/proc/self/cgroup")
		if err != nil {
			return memoryCgroup{}, err
		}
		return memoryCgroup{dir: filepath.Join("/sys/fs/cgroup", m[""]), limit: "memory.max", usage: "memory.current"}, nil
	}
	dir, err := cgroups.GetOwnCgroupPath("memory")
	if err != nil {
		return memoryCgroup{}, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "memory.oom_control")); err == nil && strings.Contains(string(b), "oom_kill_disable 1") {
		return memoryCgroup{}, fmt.Errorf("the OOM killer of memory cgroup %s is disabled", dir)
	}
	return memoryCgroup{dir: dir, limit: "memory.limit_in_bytes", usage: "memory.usage_in_bytes"}, nil
}

func (c memoryCgroup) read(file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, file))
	return strings.TrimSpace(string(b)), err
}

// onlyStandInsOf checks that every process in the cgroup is a stand-in of container id:
// lowering the limit of a cgroup that holds anything else would have the OOM killer end
// it instead.
func (c memoryCgroup) onlyStandInsOf(id string) error {
	pids, err := cgroups.GetPids(c.dir)
	if err != nil {
		return err
	}
	self, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if pid == os.Getpid() {
			continue
		}
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		raw, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		i := slices.Index(args, "--id")
		if exe != self || !slices.Contains(args, "shim") || i < 0 || i+1 >= len(args) || args[i+1] != id {
			return fmt.Errorf("memory cgroup %s holds pid %d (%s), not a stand-in of container %q", c.dir, pid, strings.Join(args, " "), id)
		}
	}
	return nil
}

// dieOfOOM has the host's OOM killer end this process in its memory cgroup. It returns
// only if that could not be done, with why; the cgroup's limit is then as it was.
func dieOfOOM(id string) error {
	cg, err := ownMemoryCgroup()
	if err != nil {
		return fmt.Errorf("memory cgroup of the stand-in: %w", err)
	}
	if err := cg.onlyStandInsOf(id); err != nil {
		return err
	}
	// The OOM killer's first choice, whatever score the stand-in inherited: not another
	// stand-in of the cgroup, and never a cgroup where nothing may be killed (-1000), where
	// the allocation below would retry its page fault for ever. Raising the score needs
	// no privilege.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("1000"), 0); err != nil {
		return fmt.Errorf("make the stand-in the OOM killer's first choice: %w", err)
	}
	old, err := cg.read(cg.limit)
	if err != nil {
		return err
	}
	usage, err := cg.read(cg.usage)
	if err != nil {
		return err
	}
	n, err := strconv.ParseInt(usage, 10, 64)
	if err != nil {
		return fmt.Errorf("%s of %s: %q: %w", cg.usage, cg.dir, usage, err)
	}
	limitFile := filepath.Join(cg.dir, cg.limit)
	if err := os.WriteFile(limitFile, []byte(strconv.FormatInt(n+oomHeadroom, 10)), 0); err != nil {
		return fmt.Errorf("lower the memory limit of %s: %w", cg.dir, err)
	}
	// Locked pages cannot be reclaimed or swapped: the charge fails at the limit and the
	// kernel's OOM killer ends the cgroup's process with the highest score, this one.
	// Without the lock (no CAP_IPC_LOCK) touched pages are charged all the same.
	unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT)
	page := os.Getpagesize()
	var chunks [][]byte
	for total := 0; total < oomMaxAlloc; total += oomChunk {
		b, err := unix.Mmap(-1, 0, oomChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			break
		}
		chunks = append(chunks, b)
		for i := 0; i < len(b); i += page {
			b[i] = 1
		}
	}
	for _, b := range chunks {
		unix.Munmap(b)
	}
	unix.Munlockall()
	return errors.Join(fmt.Errorf("still alive after allocating %d MiB with memory cgroup %s limited", oomMaxAlloc>>20, cg.dir),
		os.WriteFile(limitFile, []byte(old), 0))
}
