// Package convert is the create path's conversion of a container's OCI spec into what the
// guest agent's create engine gives its exec helper (cmd/runv-exec): the spec adjusted for
// the guest (AdjustSpec), libcontainer's configuration of it (specconv), the choice
// between the engines (CreateFallback, FastExecFallback) and the helper's request
// (ExecRequest). The agent runs it for every container; the pod daemon runs the same code
// for a spec without guest state (ForGuest) and sends the result with NEWCONTAINER, which
// a cold guest would otherwise translate (~1 200 blocks of its first container:
// docs/performance.md, "The agent's Go off the cold path, stop 16"). Pure Go: no cgo, no
// netlink, nothing of libcontainer's own package.
package convert

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"path/filepath"
	"reflect"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
)

// CreateExecRequest is the create engine's request for the init lp of container id
// (configuration cfg, which CreateFallback accepted; late rlimits late): the process's
// fields, libcontainer's default umask, the container's. The guest's fields but the
// seccomp program are left to the caller.
func CreateExecRequest(id string, cfg *configs.Config, lp *Process, late []configs.Rlimit, seccomp SeccompCompiler) (*ExecRequest, error) {
	req, err := BuildExecRequest(id, cfg, lp, late, seccomp, 0, 0)
	if err != nil {
		return nil, err
	}
	if req.Umask == nil {
		umask := uint32(0o022) // libcontainer's finalizeRootfs default
		req.Umask = &umask
	}
	req.Create = NewCreateRequest(cfg)
	return req, nil
}

// ForGuest converts a container's spec on the host, as the agent would in a guest that
// has no state of its own to put in (agentproto.Converted: no pod member, no resolv.conf,
// the create engine): nil and why not when the spec needs the guest — a pod member's
// namespaces, a privileged container's devices (the VM's), a seccomp profile (compiled in
// the guest), net sysctls (written in the guest), read-only paths only the guest's rootfs
// can tell about, or a container the create engine does not make. spec is not changed.
func ForGuest(id, rootfs string, spec *specs.Spec, member bool) (*agentproto.Converted, string) {
	switch {
	case member:
		return nil, "a pod member joins the pod's namespaces"
	case spec == nil || spec.Process == nil:
		return nil, "no process"
	case spec.Linux != nil && spec.Linux.Seccomp != nil:
		return nil, "seccomp profile"
	case spec.Linux != nil && allDevicesAllowed(spec.Linux.Resources):
		return nil, "every device allowed (the VM's devices)"
	}
	// A copy: the conversion changes the spec it is given, and the host sends this one.
	var own specs.Spec
	b, err := json.Marshal(spec)
	if err == nil {
		err = json.Unmarshal(b, &own)
	}
	if err != nil {
		return nil, fmt.Sprintf("copy the spec: %v", err)
	}
	if len(TakeNetSysctls(&own)) > 0 {
		return nil, "net sysctls"
	}
	g := GuestSpec{ContainerID: id, ShareDir: agentproto.SharePath, Rootfs: rootfs}
	adjusted, err := AdjustSpec(&own, g)
	if err != nil {
		return nil, err.Error()
	}
	looked := false
	ReadonlyDeviceBinds(adjusted, adjusted.Root.Path, func(string) (fs.FileInfo, error) {
		looked = true
		return nil, fs.ErrNotExist
	})
	if looked {
		return nil, "read-only paths in the rootfs"
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: id, Spec: adjusted})
	if err != nil {
		return nil, err.Error()
	}
	var late []configs.Rlimit
	cfg.Rlimits, late = SplitLateRlimits(cfg.Rlimits)
	lp, err := NewProcess(adjusted.Process, true)
	if err != nil {
		return nil, err.Error()
	}
	if reason := CreateFallback(cfg, lp); reason != "" {
		return nil, reason
	}
	req, err := CreateExecRequest(id, cfg, lp, late, nil)
	if err != nil {
		return nil, err.Error()
	}
	fields, err := req.EncodeSpecFields()
	if err != nil {
		return nil, err.Error()
	}
	cr := req.Create
	out := &agentproto.Converted{
		Fields: fields, CloneFlags: cr.CloneFlags, RootPropagation: cr.RootPropagation,
		ReadonlyRoot: cr.ReadonlyRoot, SetupDev: cr.SetupDev, CgroupNS: cr.CgroupNS,
	}
	if cfg.Cgroups != nil && cfg.Cgroups.Resources != nil {
		out.CgroupPath, out.DeviceRules = cfg.Cgroups.Path, cfg.Cgroups.Resources.Devices
	}
	if !reflect.DeepEqual(CgroupOf(out), cfg.Cgroups) {
		return nil, "cgroup resources beyond device rules"
	}
	if p := out.CgroupPath; !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return nil, "cgroup path " + p
	}
	var ok bool
	if out.DeviceProgram, ok = DeviceProgram(out.DeviceRules); !ok {
		return nil, "device rules libcontainer refuses"
	}
	if c := req.Caps; c != nil {
		out.Caps = []uint64{c.Bounding, c.Effective, c.Inheritable, c.Permitted, c.Ambient}
	}
	return out, ""
}

// CgroupOf is the container's cgroup configuration that cv carries.
func CgroupOf(cv *agentproto.Converted) *cgroups.Cgroup {
	return &cgroups.Cgroup{Path: cv.CgroupPath, Resources: &cgroups.Resources{Devices: cv.DeviceRules}}
}

// RequestOf is the create engine's request made from the host's conversion: the spec's
// fields as the host encoded them; the guest's are the caller's to fill in.
func RequestOf(cv *agentproto.Converted) (*ExecRequest, error) {
	req := &ExecRequest{
		SpecFields: cv.Fields, ConsoleFD: -1,
		Create: &CreateRequest{
			CloneFlags: cv.CloneFlags, RootPropagation: cv.RootPropagation,
			ReadonlyRoot: cv.ReadonlyRoot, SetupDev: cv.SetupDev, CgroupNS: cv.CgroupNS,
		},
	}
	switch len(cv.Caps) {
	case 0:
	case 5:
		req.Caps = &CapSets{Bounding: cv.Caps[0], Effective: cv.Caps[1], Inheritable: cv.Caps[2], Permitted: cv.Caps[3], Ambient: cv.Caps[4]}
	default:
		return nil, Errorf(agentproto.KindInvalid, "converted spec: %d capability sets, want 5", len(cv.Caps))
	}
	return req, nil
}
