package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// cgroupRoot is where the agent mounts the unified hierarchy (boot_linux.go).
const cgroupRoot = "/sys/fs/cgroup"

// containerCgroup is the cgroup v2 directory of a container of the create engine. What a
// container without limits asks of its cgroup is the directory, with the controllers
// enabled on its parents, and its device filter; libcontainer's cgroup manager does the
// same through its fs2 package, whose code is ~300 translated blocks of a cold guest's
// first container (docs/performance.md, "Cold first container, stop 13"). So a cgroup
// whose only resources are device rules is made and set here, as fs2 makes and sets it;
// with any other resource, and for freezing, stats and the freezer state of a frozen
// cgroup, the cgroup is libcontainer's manager's, made when first needed.
type containerCgroup struct {
	dir string
	cfg *cgroups.Cgroup
	mgr cgroups.Manager // libcontainer's fs2 manager, once needed
	// mayTakeSpare: the container cannot see its cgroup's name (a cgroup namespace of its
	// own) and create may give it the spare cgroup instead of making one.
	mayTakeSpare bool
	// fresh: create made the directory (or took the spare, made empty): no device filter
	// is attached to it yet.
	fresh bool
}

// newContainerCgroup prepares the cgroup of cfg; create makes it. ownNamespace tells
// whether the container has a cgroup namespace of its own.
func newContainerCgroup(cfg *cgroups.Cgroup, ownNamespace bool) (*containerCgroup, error) {
	if dir, ok := ownCgroupDir(cfg); ok {
		return &containerCgroup{dir: dir, cfg: cfg, mayTakeSpare: ownNamespace}, nil
	}
	mgr, err := manager.New(cfg)
	if err != nil {
		return nil, err
	}
	return &containerCgroup{dir: mgr.Path(""), cfg: cfg, mgr: mgr}, nil
}

// newConvertedCgroup is newContainerCgroup of the cgroup the host's conversion carries
// (convert.CgroupOf: an absolute, clean path and device rules, which ownCgroupDir
// accepts), without checking it again: the cgroup of a container with a cgroup
// namespace of its own (cv.CgroupNS) may be the spare.
func newConvertedCgroup(cv *agentproto.Converted) *containerCgroup {
	return &containerCgroup{dir: cgroupRoot + cv.CgroupPath, cfg: convert.CgroupOf(cv), mayTakeSpare: cv.CgroupNS}
}

// ownCgroupDir is the directory of a cgroup this file makes, as fs2 names it: an absolute
// cgroups path (runv's convert.AdjustSpec sets /runv/<id>) under the unified mount, and resources
// that are device rules only. !ok for any other cgroup: libcontainer's manager makes it.
func ownCgroupDir(cfg *cgroups.Cgroup) (string, bool) {
	if cfg.Systemd || cfg.Rootless || cfg.Name != "" || cfg.Parent != "" || !filepath.IsAbs(cfg.Path) ||
		(cfg.Resources != nil && !devicesOnly(cfg.Resources)) {
		return "", false
	}
	p := filepath.Clean(cfg.Path)
	if p == "/" {
		return "", false
	}
	return cgroupRoot + p, true
}

// devicesOnly tells whether r sets nothing but device rules: for such resources every
// setter of fs2's Manager.Set but the devices' is a no-op. Field by field, not
// reflect.Value.IsZero: reflect's walk of the struct was ~80 translated blocks of a cold
// guest's first container. TestDevicesOnly sets each field in turn, so a field a
// libcontainer update adds fails it until it is listed here.
func devicesOnly(r *cgroups.Resources) bool {
	return r.Memory == 0 && r.MemoryReservation == 0 && r.MemorySwap == 0 &&
		r.CpuShares == 0 && r.CpuQuota == 0 && r.CpuBurst == nil && r.CpuPeriod == 0 &&
		r.CpuRtRuntime == 0 && r.CpuRtPeriod == 0 && r.CpusetCpus == "" && r.CpusetMems == "" &&
		r.CPUIdle == nil && r.PidsLimit == nil &&
		r.BlkioWeight == 0 && r.BlkioLeafWeight == 0 && r.BlkioWeightDevice == nil &&
		r.BlkioThrottleReadBpsDevice == nil && r.BlkioThrottleWriteBpsDevice == nil &&
		r.BlkioThrottleReadIOPSDevice == nil && r.BlkioThrottleWriteIOPSDevice == nil &&
		r.Freezer == "" && r.HugetlbLimit == nil && !r.OomKillDisable && r.MemorySwappiness == nil &&
		r.NetPrioIfpriomap == nil && r.NetClsClassid == 0 && r.Rdma == nil && r.CpuWeight == 0 &&
		r.Unified == nil && !r.SkipFreezeOnSet && !r.MemoryCheckBeforeUpdate
}

// manager is libcontainer's manager of the cgroup, made on first use.
func (c *containerCgroup) manager() (cgroups.Manager, error) {
	if c.mgr == nil {
		mgr, err := manager.New(c.cfg)
		if err != nil {
			return nil, err
		}
		if mgr.Path("") != c.dir {
			return nil, fmt.Errorf("libcontainer's cgroup manager names %s, not %s", mgr.Path(""), c.dir)
		}
		c.mgr = mgr
	}
	return c.mgr, nil
}

// create makes the cgroup: fs2's Apply, without a process to move in (the helper is
// forked into it with CLONE_INTO_CGROUP). A container that may take the spare cgroup
// gets it, renamed in its configuration (cgroup v2 directories cannot be renamed).
func (c *containerCgroup) create() error {
	if c.mgr != nil {
		return c.mgr.Apply(-1)
	}
	if c.mayTakeSpare {
		if dir, cgPath, ok := spareCgroups.take(); ok {
			c.dir, c.cfg.Path, c.fresh = dir, cgPath, true
			return nil
		}
	}
	made, err := createCgroupDir(cgroupRoot, c.dir)
	c.fresh = made
	return err
}

// spareCgroup is an empty container cgroup made ahead, in the warm-up of a template or a
// pooled VM, for the pod's first container: a template's clones inherit it, and the
// mkdir (the kernel making the cgroup's state of each controller, ~850 translated blocks
// of a cold clone's first container) is not on their path. Only a container with a cgroup
// namespace of its own takes it: it sees its cgroup as "/", never the directory's name.
// The spare is made fresh, so its counters (cpu.stat, memory.events, ...) are a new
// cgroup's.
type spareCgroup struct {
	mu   sync.Mutex
	root string // the unified mount
	dir  string // the spare's directory, "" while there is none
	made int    // spares made so far: each gets a name of its own
}

// spareCgroups is the guest's one spare.
var spareCgroups = &spareCgroup{root: cgroupRoot}

// make makes a spare cgroup if there is none. Each is a new directory, /runv/@spare<n>:
// '@' is in no container id (runc's rule, which the host checks), so no container's
// /runv/<id> is ever taken for a spare, and a spare in use keeps its name.
func (s *spareCgroup) make() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir != "" {
		return nil
	}
	s.made++
	dir := s.root + "/runv/@spare" + strconv.Itoa(s.made)
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		// createCgroupDir takes an existing directory as made: never one in use.
		return fmt.Errorf("spare cgroup %s: %w", dir, err)
	}
	if _, err := createCgroupDir(s.root, dir); err != nil {
		return fmt.Errorf("spare cgroup: %w", err)
	}
	s.dir = dir
	return nil
}

// take hands out the spare cgroup, if there is one: its directory and its cgroup path (as
// configs name it, under the unified mount). The next make makes another.
func (s *spareCgroup) take() (dir, cgroupPath string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir, s.dir = s.dir, ""
	return dir, strings.TrimPrefix(dir, s.root), dir != ""
}

// createCgroupDir makes dir and its missing parents under root (the unified mount), with
// every controller of the root enabled in the subtree of each parent (the root's included), and
// turns a parent found in the "domain invalid" state threaded, as fs2's CreateCgroupPath
// does for a cgroup without domain controllers' limits. What it made is removed on error.
// made tells whether dir itself was made here (else it existed).
func createCgroupDir(root, dir string) (made bool, err error) {
	rel, ok := strings.CutPrefix(dir, root+"/")
	if !ok {
		return false, fmt.Errorf("cgroup %s is not under %s", dir, root)
	}
	b, err := os.ReadFile(root + "/cgroup.controllers")
	if err != nil {
		return false, err
	}
	enable := "+" + strings.Join(strings.Fields(string(b)), " +")
	var mkdirs []string
	defer func() {
		if err != nil {
			for i := len(mkdirs) - 1; i >= 0; i-- {
				_ = os.Remove(mkdirs[i])
			}
		}
	}()
	current := root
	elems := strings.Split(rel, "/")
	for i := -1; i < len(elems); i++ {
		if i >= 0 {
			current += "/" + elems[i]
			if err := os.Mkdir(current, 0o755); err == nil {
				mkdirs = append(mkdirs, current)
			} else if !errors.Is(err, os.ErrExist) {
				return false, err
			}
			if typ, _ := os.ReadFile(current + "/cgroup.type"); strings.TrimSpace(string(typ)) == "domain invalid" {
				_ = writeCgroupFile(current+"/cgroup.type", "threaded")
			}
		}
		if i < len(elems)-1 {
			enableControllers(current, enable)
		}
	}
	return len(mkdirs) > 0 && mkdirs[len(mkdirs)-1] == dir, nil
}

// enableControllers writes enable ("+cpu +memory ...") to dir's cgroup.subtree_control,
// and when the kernel refuses the whole, each controller alone, ignoring which it refuses
// (fs2's CreateCgroupPath does the same: a controller a parent cannot have is not an error).
func enableControllers(dir, enable string) {
	f := dir + "/cgroup.subtree_control"
	if writeCgroupFile(f, enable) == nil {
		return
	}
	for _, ctrl := range strings.Fields(enable) {
		_ = writeCgroupFile(f, ctrl)
	}
}

// writeCgroupFile writes s to a cgroup interface file, opened without O_TRUNC (which
// os.WriteFile sets): a cgroup file has nothing to truncate, and the truncation's
// setattr path (do_truncate, notify_change, kernfs_iop_setattr: ~70 translation blocks) ran
// for nothing in a cold guest's first container.
func writeCgroupFile(name, s string) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// set applies r: its device rules here when they are all it has, else fs2's Set.
func (c *containerCgroup) set(r *cgroups.Resources) error {
	if r == nil {
		return nil
	}
	if c.mgr == nil && devicesOnly(r) {
		if cgroups.DevicesSetV2 == nil {
			if len(r.Devices) > 0 {
				return cgroups.ErrDevicesUnsupported
			}
			return nil
		}
		return cgroups.DevicesSetV2(c.dir, r)
	}
	mgr, err := c.manager()
	if err != nil {
		return err
	}
	return mgr.Set(r)
}

// setConverted sets the resources of a cgroup made from the host's conversion
// (newConvertedCgroup: device rules only), with the device filter the host compiled from
// them (agentproto.Converted.DeviceProgram).
func (c *containerCgroup) setConverted(insns []byte) error {
	r := c.cfg.Resources
	if c.mgr == nil && theDeviceFilters != nil && len(insns) > 0 {
		return theDeviceFilters.setProgram(c.dir, r, insns, c.fresh)
	}
	return c.set(r)
}

// freezerState is the cgroup's cgroup.freeze: thawed read here, anything else (frozen, or
// being frozen) through fs2, which waits for the freeze to complete.
func (c *containerCgroup) freezerState() (cgroups.FreezerState, error) {
	if b, err := os.ReadFile(c.dir + "/cgroup.freeze"); err == nil && string(b) == "0\n" {
		return cgroups.Thawed, nil
	}
	mgr, err := c.manager()
	if err != nil {
		return cgroups.Undefined, err
	}
	return mgr.GetFreezerState()
}

func (c *containerCgroup) freeze(state cgroups.FreezerState) error {
	mgr, err := c.manager()
	if err != nil {
		return err
	}
	return mgr.Freeze(state)
}

func (c *containerCgroup) stats() (*cgroups.Stats, error) {
	mgr, err := c.manager()
	if err != nil {
		return nil, err
	}
	return mgr.GetStats()
}

func (c *containerCgroup) exists() bool { return cgroups.PathExists(c.dir) }

func (c *containerCgroup) pids() ([]int, error) { return cgroups.GetAllPids(c.dir) }

// destroy removes the cgroup (fs2's Destroy: its children too, retrying while busy).
func (c *containerCgroup) destroy() error { return cgroups.RemovePath(c.dir) }
