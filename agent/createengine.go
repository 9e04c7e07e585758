package agent

import (
	"encoding/binary"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// The create engine: the exec helper (cmd/runv-exec) in its create mode makes a container's
// init — namespaces, rootfs, mounts, /dev, pivot_root, masked and read-only paths, then the
// process set-up the exec path has — instead of libcontainer's `runc init` (the Go agent
// re-executed, its rootfs code emulated under TCG and the parent/child syncs: ~160 ms of
// a ~180 ms NEWCONTAINER, docs/performance.md). The agent keeps the cgroup, through
// libcontainer's own cgroup manager. This file is the create part of the wire format and
// the choice between the engines.

// Field tags of create mode (cmd/runv-exec/runv-exec.c has the same numbers).
const (
	tagCreate   = 20 // u32 CLONE_NEW* to create, u32 root propagation, u32 start fd, u8 readonly root, u8 set up /dev
	tagRootfs   = 21 // string
	tagMount    = 22 // u32 flags, u32 cleared flags, u32 n, u32 propagation[n]; source, destination, type, data
	tagDevice   = 23 // u32 type, u32 major, u32 minor, u32 mode, u32 uid, u32 gid; path
	tagHostname = 24 // string
	tagDomain   = 25 // string
	tagSysctl   = 26 // key, value (NUL-terminated)
	tagROPath   = 27 // string
	tagMaskPath = 28 // string
	tagCgroup   = 29 // string
	tagTrace    = 30 // no data: the init reports its steps (reportTrace)
)

// maxMountPropagation is the helper's limit of propagation flags per mount.
const maxMountPropagation = 8

// createRequest is what the helper needs, beyond the process, to make the container.
type createRequest struct {
	cloneFlags      uint32
	rootPropagation uint32
	startFD         int
	readonlyRoot    bool
	setupDev        bool
	rootfs          string
	mounts          []*configs.Mount
	devices         []*config.Device
	hostname        string
	domainname      string
	sysctls         map[string]string
	readonlyPaths   []string
	maskPaths       []string
	cgroupDir       string
}

// newCreateRequest takes the container's part of the request from its libcontainer
// configuration, which createFallback accepted; cgroupDir is the container's cgroup.
func newCreateRequest(cfg *configs.Config, cgroupDir string) *createRequest {
	cr := &createRequest{
		rootPropagation: uint32(cfg.RootPropagation), readonlyRoot: cfg.Readonlyfs,
		rootfs: cfg.Rootfs, mounts: cfg.Mounts, devices: cfg.Devices, setupDev: true,
		hostname: cfg.Hostname, domainname: cfg.Domainname, sysctls: cfg.Sysctl,
		readonlyPaths: cfg.ReadonlyPaths, maskPaths: cfg.MaskPaths,
	}
	for _, ns := range cfg.Namespaces {
		if ns.Path == "" {
			cr.cloneFlags |= uint32(ns.Syscall())
		}
	}
	if cfg.Namespaces.Contains(configs.NEWCGROUP) {
		cr.cgroupDir = cgroupDir
	}
	for _, m := range cfg.Mounts {
		// libcontainer's needsSetupDev: a bind on /dev brings its own.
		if m.Device == "bind" && filepath.Clean(m.Destination) == "/dev" {
			cr.setupDev = false
		}
	}
	return cr
}

// encode appends the create fields; field is execRequest.encode's writer.
func (cr *createRequest) encode(field func(uint16, []byte)) error {
	u32 := binary.LittleEndian.AppendUint32
	strs := func(ss ...string) ([]byte, error) {
		var b []byte
		for _, s := range ss {
			if strings.IndexByte(s, 0) >= 0 {
				return nil, errorf(agentproto.KindInvalid, "%q contains a NUL byte", s)
			}
			b = append(append(b, s...), 0)
		}
		return b, nil
	}
	b := u32(u32(u32(nil, cr.cloneFlags), cr.rootPropagation), uint32(cr.startFD))
	field(tagCreate, append(b, boolByte(cr.readonlyRoot), boolByte(cr.setupDev)))
	one := func(tag uint16, head []byte, ss ...string) error {
		b, err := strs(ss...)
		if err != nil {
			return err
		}
		if tag != tagMount && tag != tagSysctl {
			b = b[:len(b)-1] // a single string goes without its NUL
		}
		field(tag, append(head, b...))
		return nil
	}
	if err := one(tagRootfs, nil, cr.rootfs); err != nil {
		return err
	}
	for _, m := range cr.mounts {
		h := u32(u32(u32(nil, uint32(m.Flags)), uint32(m.ClearedFlags)), uint32(len(m.PropagationFlags)))
		for _, p := range m.PropagationFlags {
			h = u32(h, uint32(p))
		}
		if err := one(tagMount, h, m.Source, m.Destination, m.Device, m.Data); err != nil {
			return err
		}
	}
	for _, d := range cr.devices {
		h := u32(u32(u32(nil, uint32(d.Type)), uint32(d.Major)), uint32(d.Minor))
		h = u32(u32(u32(h, uint32(d.FileMode.Perm())), d.Uid), d.Gid)
		if err := one(tagDevice, h, d.Path); err != nil {
			return err
		}
	}
	optional := []struct {
		tag uint16
		s   string
	}{{tagHostname, cr.hostname}, {tagDomain, cr.domainname}, {tagCgroup, cr.cgroupDir}}
	for _, o := range optional {
		if o.s == "" {
			continue
		}
		if err := one(o.tag, nil, o.s); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(cr.sysctls))
	for k := range cr.sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := one(tagSysctl, nil, k, cr.sysctls[k]); err != nil {
			return err
		}
	}
	for _, l := range [...]struct {
		tag  uint16
		list []string
	}{{tagROPath, cr.readonlyPaths}, {tagMaskPath, cr.maskPaths}} {
		for _, p := range l.list {
			if err := one(l.tag, nil, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// createFallback is the one place that decides which engine creates a container: "" when
// the create engine makes it exactly as libcontainer would, else why not (the container is
// then libcontainer's, for its whole life). Every exec of an engine's container goes
// through the exec helper, so whatever rules the helper out rules the engine out too.
func createFallback(cfg *configs.Config, lp *libcontainer.Process) string {
	if reason := fastExecFallback(cfg, lp); reason != "" {
		return reason
	}
	switch {
	case cfg.MountLabel != "":
		return "SELinux mount label"
	case len(cfg.Hooks) > 0:
		return "hooks"
	case cfg.NoPivotRoot:
		return "no pivot_root"
	case !cfg.Namespaces.Contains(configs.NEWNS) || cfg.Namespaces.PathOf(configs.NEWNS) != "":
		return "no mount namespace of its own"
	case cfg.Namespaces.Contains(configs.NEWTIME):
		return "time namespace"
	case cfg.Rootfs == "" || !filepath.IsAbs(cfg.Rootfs):
		return "relative rootfs"
	}
	for _, m := range cfg.Mounts {
		if reason := mountFallback(m); reason != "" {
			return "mount " + m.Destination + ": " + reason
		}
	}
	for _, d := range cfg.Devices {
		if d.Type != config.CharDevice && d.Type != config.BlockDevice && d.Type != config.FifoDevice {
			return "device " + d.Path + " of type " + string(d.Type)
		}
		if !filepath.IsAbs(d.Path) {
			return "device with a relative path"
		}
	}
	return ""
}

// mountFallback is why the engine does not make this mount, "" when it does.
func mountFallback(m *configs.Mount) string {
	dest := filepath.Clean(m.Destination)
	switch {
	case !filepath.IsAbs(m.Destination):
		return "relative destination"
	case m.IsIDMapped():
		return "idmapped"
	case m.RecAttr != nil:
		return "recursive mount attributes"
	case m.Extensions&configs.EXT_COPYUP != 0:
		return "tmpcopyup"
	case len(m.PropagationFlags) > maxMountPropagation:
		return "too many propagation flags"
	case dest == "/proc" && m.Device != "proc":
		// libcontainer's checkProcMount: only a procfs (or a bind of one) there.
		return "not a proc mount on /proc"
	case strings.HasPrefix(dest, "/proc/"):
		// The files libcontainer allows under /proc (checkProcMount) stay its job.
		return "inside /proc"
	case dest == "/":
		return "on the root"
	case m.Flags&unix.MS_BIND != 0 && m.Device != "bind":
		return "bind flag on a " + m.Device + " mount"
	}
	return ""
}
