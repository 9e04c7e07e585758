package convert

import (
	"encoding/binary"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencontainers/cgroups/devices/config"
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
	tagCreate   = 20 // u32 CLONE_NEW* to create, u32 root propagation, u32 start fd, u8 readonly root, u8 set up /dev, u8 in place
	tagRootfs   = 21 // string
	tagMount    = 22 // u32 flags, u32 cleared flags, u32 n, u32 propagation[n]; source, destination, type, data
	tagDevice   = 23 // u32 type, u32 major, u32 minor, u32 mode, u32 uid, u32 gid; path
	tagHostname = 24 // string
	tagDomain   = 25 // string
	tagSysctl   = 26 // key, value (NUL-terminated)
	tagROPath   = 27 // string
	tagMaskPath = 28 // string
	tagCgroup   = 29 // string
	TagTrace    = 30 // no data: the init reports its steps (reportTrace)
)

// maxMountPropagation is the helper's limit of propagation flags per mount.
const maxMountPropagation = 8

// CreateRequest is what the helper needs, beyond the process, to make the container: the
// spec's fields (ExecRequest.EncodeSpecFields encodes them) and the guest's.
type CreateRequest struct {
	// The spec's fields. CloneFlags .. SetupDev go in tagCreate with the guest's StartFD.
	CloneFlags      uint32
	RootPropagation uint32
	ReadonlyRoot    bool
	SetupDev        bool
	Rootfs          string
	Mounts          []*configs.Mount
	Devices         []*config.Device
	Hostname        string
	Domainname      string
	Sysctls         map[string]string
	ReadonlyPaths   []string
	MaskPaths       []string
	// CgroupNS: the container has a cgroup namespace of its own, and the helper is told
	// its cgroup (CgroupDir).
	CgroupNS bool

	// The guest's fields: the start pipe's descriptor, the container's cgroup directory.
	StartFD   int
	CgroupDir string
	// InPlace: the agent started the helper in the container's new namespaces (its clone
	// made them all but the cgroup namespace, which a clone would root at the agent's
	// cgroup): the helper is the container's init and forks nothing.
	InPlace bool
}

// NewCreateRequest takes the container's part of the request from its libcontainer
// configuration, which CreateFallback accepted.
func NewCreateRequest(cfg *configs.Config) *CreateRequest {
	cr := &CreateRequest{
		RootPropagation: uint32(cfg.RootPropagation), ReadonlyRoot: cfg.Readonlyfs,
		Rootfs: cfg.Rootfs, Mounts: cfg.Mounts, Devices: cfg.Devices, SetupDev: true,
		Hostname: cfg.Hostname, Domainname: cfg.Domainname, Sysctls: cfg.Sysctl,
		ReadonlyPaths: cfg.ReadonlyPaths, MaskPaths: cfg.MaskPaths,
		CgroupNS: cfg.Namespaces.Contains(configs.NEWCGROUP),
	}
	for _, ns := range cfg.Namespaces {
		if ns.Path == "" {
			cr.CloneFlags |= uint32(ns.Syscall())
		}
	}
	for _, m := range cfg.Mounts {
		// libcontainer's needsSetupDev: a bind on /dev brings its own.
		if m.Device == "bind" && filepath.Clean(m.Destination) == "/dev" {
			cr.SetupDev = false
		}
	}
	return cr
}

// nulStrings joins strings, each NUL-terminated; a string with a NUL in it is refused.
func nulStrings(ss ...string) ([]byte, error) {
	var b []byte
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			return nil, Errorf(agentproto.KindInvalid, "%q contains a NUL byte", s)
		}
		b = append(append(b, s...), 0)
	}
	return b, nil
}

// stringField appends a field of head then strings: NUL-terminated for a mount and a
// sysctl, a single string without its NUL for every other tag.
func stringField(w *fieldWriter, tag uint16, head []byte, ss ...string) error {
	b, err := nulStrings(ss...)
	if err != nil {
		return err
	}
	if tag != tagMount && tag != tagSysctl {
		b = b[:len(b)-1]
	}
	w.field(tag, append(head, b...))
	return nil
}

func (cr *CreateRequest) appendSpecFields(w *fieldWriter) error {
	u32 := binary.LittleEndian.AppendUint32
	if err := stringField(w, tagRootfs, nil, cr.Rootfs); err != nil {
		return err
	}
	for _, m := range cr.Mounts {
		h := u32(u32(u32(nil, uint32(m.Flags)), uint32(m.ClearedFlags)), uint32(len(m.PropagationFlags)))
		for _, p := range m.PropagationFlags {
			h = u32(h, uint32(p))
		}
		if err := stringField(w, tagMount, h, m.Source, m.Destination, m.Device, m.Data); err != nil {
			return err
		}
	}
	for _, d := range cr.Devices {
		h := u32(u32(u32(nil, uint32(d.Type)), uint32(d.Major)), uint32(d.Minor))
		h = u32(u32(u32(h, uint32(d.FileMode.Perm())), d.Uid), d.Gid)
		if err := stringField(w, tagDevice, h, d.Path); err != nil {
			return err
		}
	}
	for _, o := range [...]struct {
		tag uint16
		s   string
	}{{tagHostname, cr.Hostname}, {tagDomain, cr.Domainname}} {
		if o.s == "" {
			continue
		}
		if err := stringField(w, o.tag, nil, o.s); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(cr.Sysctls))
	for k := range cr.Sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := stringField(w, tagSysctl, nil, k, cr.Sysctls[k]); err != nil {
			return err
		}
	}
	for _, l := range [...]struct {
		tag  uint16
		list []string
	}{{tagROPath, cr.ReadonlyPaths}, {tagMaskPath, cr.MaskPaths}} {
		for _, p := range l.list {
			if err := stringField(w, l.tag, nil, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (cr *CreateRequest) appendGuestFields(w *fieldWriter) error {
	put := binary.LittleEndian.AppendUint32
	b := put(put(put(nil, cr.CloneFlags), cr.RootPropagation), uint32(cr.StartFD))
	w.field(tagCreate, append(b, boolByte(cr.ReadonlyRoot), boolByte(cr.SetupDev), boolByte(cr.InPlace)))
	if cr.CgroupNS && cr.CgroupDir != "" {
		return stringField(w, tagCgroup, nil, cr.CgroupDir)
	}
	return nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// CreateFallback is the one place that decides which engine creates a container: "" when
// the create engine makes it exactly as libcontainer would, else why not (the container is
// then libcontainer's, for its whole life). Every exec of an engine's container goes
// through the exec helper, so whatever rules the helper out rules the engine out too.
func CreateFallback(cfg *configs.Config, lp *Process) string {
	if reason := FastExecFallback(cfg, lp); reason != "" {
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
