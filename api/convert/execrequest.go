package convert

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/opencontainers/runc/libcontainer/configs"

	"github.com/runv-project/runv/api/agentproto"
)

// The exec helper (cmd/runv-exec, C, static, in the initramfs) runs EXECCMD's process in a
// running container instead of libcontainer's `runc init`, the Go agent re-executed:
// under TCG its Go runtime start and the parent/child syncs were ~40 ms of a 56 ms exec
// (docs/performance.md). The helper does what libcontainer's setns path does for the
// process attributes it knows (FastExecFallback lists what it does not); this file is the
// wire format between the two and the choice between them.

// Field tags of the helper's request (cmd/runv-exec/runv-exec.c has the same numbers).
const (
	tagNS       = 1  // u32 nstype, u32 fd; repeated
	tagUID      = 2  // u32
	tagGID      = 3  // u32
	tagGroups   = 4  // u32 each
	tagCaps     = 5  // u64 bounding, effective, inheritable, permitted, ambient; u32 last cap
	tagNNP      = 6  // u8
	tagRlimit   = 7  // u32 resource, u32 0, u64 soft, u64 hard; repeated
	tagUmask    = 8  // u32
	tagCwd      = 9  // string
	tagArgs     = 10 // NUL-terminated strings
	tagEnv      = 11 // NUL-terminated strings
	tagSeccomp  = 12 // u32 flags, then the BPF program (struct sock_filter[])
	tagKeyring  = 13 // string
	tagConsole  = 14 // u32 socket fd, u16 rows, u16 cols
	tagOOMScore = 15 // string
	tagHome     = 16 // no data: look HOME up in the container's /etc/passwd
	tagServe    = 31 // u32 socket FD: serve the container's execs (execserver_linux.go)
	tagHint     = 32 // string: where the host found the program in PATH (ExecProcess.ProgramHint)
)

// ExecMagic starts every request; the helper refuses anything else.
const ExecMagic = "RVX1"

// MaxExecRequest is the helper's limit on a request (its MAX_REQUEST).
const MaxExecRequest = 8 << 20

// CapSets are the capability sets of tagCaps, in its order.
type CapSets struct {
	Bounding, Effective, Inheritable, Permitted, Ambient uint64
}

// ExecNamespace is one namespace to join: its CLONE_NEW* type and the descriptor number
// the helper has it on.
type ExecNamespace struct {
	NSType uint32
	FD     int
}

// ExecRequest is everything the helper needs to start the process. Its fields are in two
// groups: what the container's spec alone decides (the process and, for a create, the
// container: EncodeSpecFields), which the host can make (agentproto.Converted), and what
// only the guest knows (descriptor numbers, its kernel's last capability, the cgroup, the
// compiled seccomp program), which the agent adds.
type ExecRequest struct {
	// SpecFields, when not nil, are the spec's fields already encoded (EncodeSpecFields of
	// the host's conversion): the spec's fields below are then not used.
	SpecFields []byte

	// The spec's fields.
	UID, GID    uint32
	Groups      []uint32
	NoNewPrivs  bool
	Rlimits     []configs.Rlimit
	Umask       *uint32
	Cwd         string
	Args, Env   []string
	Keyring     string // "" with NoNewKeyring
	OOMScoreAdj *int
	LookupHome  bool
	// Create makes the helper create a container whose init is this process (create
	// mode, createrequest.go); nil for an exec. Its spec fields are the spec's too.
	Create *CreateRequest

	// The guest's fields.
	Namespaces []ExecNamespace
	// Caps are the capability sets over every name capNames knows (nil: the capabilities
	// stay as they are, libcontainer's rule); the helper gets those up to LastCap, the
	// guest kernel's last: names it does not know are ignored, as libcontainer ignores them.
	Caps    *CapSets
	LastCap uint32
	// Seccomp is the BPF program (raw struct sock_filter array) and its seccomp(2) flags.
	Seccomp      []byte
	SeccompFlags uint32
	ConsoleFD    int // -1: no terminal
	Rows, Cols   uint16
	// TraceSteps has the init report its steps (runv.trace=1).
	TraceSteps bool
	// ProgramHint is where the host found Args[0] in the PATH: the helper tries it
	// before searching ("": search).
	ProgramHint string
	// Serve makes the helper the container's exec server, its end of the socket Serve
	// (agent/execserver_linux.go); ServeFD is its descriptor number in the helper.
	Serve   *os.File
	ServeFD int
}

// fieldWriter appends the request's fields: a u16 tag, two bytes of padding, a u32 length,
// the data.
type fieldWriter []byte

func (w *fieldWriter) field(tag uint16, data []byte) {
	b := binary.LittleEndian.AppendUint16(*w, tag)
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	*w = append(b, data...)
}

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// Encode serialises the request; strings with a NUL in them cannot be passed to execve and
// are refused here, with the field's name. The helper takes the fields in any order.
func (r *ExecRequest) Encode() ([]byte, error) {
	// The frame's header first, its length filled in at the end. Plain appends, not a
	// bytes.Buffer: nothing else on a cold guest's way to its first container uses one,
	// and its code is translated blocks too (docs/performance.md, "The agent's Go off the
	// cold path, stop 16").
	w := fieldWriter(append(make([]byte, 0, 512+len(r.SpecFields)), ExecMagic...))
	w = append(w, 0, 0, 0, 0)
	const header = len(ExecMagic) + 4
	for _, ns := range r.Namespaces {
		w.field(tagNS, binary.LittleEndian.AppendUint32(u32(ns.NSType), uint32(ns.FD)))
	}
	if r.Serve != nil {
		// The server has no process of its own: each exec's request names one.
		w.field(tagServe, u32(uint32(r.ServeFD)))
	} else {
		if r.SpecFields != nil {
			w = append(w, r.SpecFields...)
		} else if err := r.appendSpecFields(&w); err != nil {
			return nil, err
		}
		if err := r.appendGuestFields(&w); err != nil {
			return nil, err
		}
	}
	if n := len(w) - header; n > MaxExecRequest {
		return nil, Errorf(agentproto.KindInvalid, "the process is too large for the exec helper (%d bytes of args, env and seccomp program, limit %d)", n, MaxExecRequest)
	}
	binary.LittleEndian.PutUint32(w[len(ExecMagic):], uint32(len(w)-header))
	return w, nil
}

// EncodeSpecFields encodes the fields that the spec alone decides (the host's part of
// the request: agentproto.Converted.Fields).
func (r *ExecRequest) EncodeSpecFields() ([]byte, error) {
	var w fieldWriter
	if err := r.appendSpecFields(&w); err != nil {
		return nil, err
	}
	return w, nil
}

func (r *ExecRequest) appendSpecFields(w *fieldWriter) error {
	w.field(tagUID, u32(r.UID))
	w.field(tagGID, u32(r.GID))
	var groups []byte
	for _, g := range r.Groups {
		groups = binary.LittleEndian.AppendUint32(groups, g)
	}
	w.field(tagGroups, groups)
	if r.NoNewPrivs {
		w.field(tagNNP, []byte{1})
	}
	for _, rl := range r.Rlimits {
		b := binary.LittleEndian.AppendUint32(nil, uint32(rl.Type))
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint64(b, rl.Soft)
		w.field(tagRlimit, binary.LittleEndian.AppendUint64(b, rl.Hard))
	}
	if r.Umask != nil {
		w.field(tagUmask, u32(*r.Umask))
	}
	for _, s := range [...]struct{ what, s string }{{"cwd", r.Cwd}, {"keyring", r.Keyring}} {
		if strings.IndexByte(s.s, 0) >= 0 {
			return Errorf(agentproto.KindInvalid, "%s %q contains a NUL byte", s.what, s.s)
		}
	}
	w.field(tagCwd, []byte(r.Cwd))
	for _, l := range [...]struct {
		tag  uint16
		list []string
	}{{tagArgs, r.Args}, {tagEnv, r.Env}} {
		var b []byte
		for _, s := range l.list {
			if strings.IndexByte(s, 0) >= 0 {
				return Errorf(agentproto.KindInvalid, "argument or environment entry %q contains a NUL byte", s)
			}
			b = append(append(b, s...), 0)
		}
		w.field(l.tag, b)
	}
	if r.Keyring != "" {
		w.field(tagKeyring, []byte(r.Keyring))
	}
	if r.OOMScoreAdj != nil {
		w.field(tagOOMScore, []byte(strconv.Itoa(*r.OOMScoreAdj)))
	}
	if r.LookupHome {
		w.field(tagHome, nil)
	}
	if r.Create != nil {
		return r.Create.appendSpecFields(w)
	}
	return nil
}

func (r *ExecRequest) appendGuestFields(w *fieldWriter) error {
	if c := r.Caps; c != nil {
		known := ^uint64(0)
		if r.LastCap < 63 {
			known = 1<<(r.LastCap+1) - 1
		}
		var b []byte
		for _, set := range [...]uint64{c.Bounding, c.Effective, c.Inheritable, c.Permitted, c.Ambient} {
			b = binary.LittleEndian.AppendUint64(b, set&known)
		}
		w.field(tagCaps, binary.LittleEndian.AppendUint32(b, r.LastCap))
	}
	if strings.IndexByte(r.ProgramHint, 0) >= 0 {
		return Errorf(agentproto.KindInvalid, "program hint %q contains a NUL byte", r.ProgramHint)
	}
	if r.ProgramHint != "" {
		w.field(tagHint, []byte(r.ProgramHint))
	}
	if r.Seccomp != nil {
		w.field(tagSeccomp, append(u32(r.SeccompFlags), r.Seccomp...))
	}
	if r.ConsoleFD >= 0 {
		b := binary.LittleEndian.AppendUint32(nil, uint32(r.ConsoleFD))
		b = binary.LittleEndian.AppendUint16(b, r.Rows)
		w.field(tagConsole, binary.LittleEndian.AppendUint16(b, r.Cols))
	}
	if r.Create != nil {
		if err := r.Create.appendGuestFields(w); err != nil {
			return err
		}
	}
	if r.TraceSteps {
		w.field(TagTrace, nil)
	}
	return nil
}

// FastExecFallback is the one place that decides which engine runs an exec: "" when the
// helper can start the process exactly as libcontainer would, else why not (the exec
// then goes through libcontainer's `runc init`). cfg is the container's configuration, lp
// the process as NewProcess made it.
func FastExecFallback(cfg *configs.Config, lp *Process) string {
	switch {
	case lp.AppArmorProfile != "" || cfg.AppArmorProfile != "":
		return "AppArmor profile"
	case lp.Label != "" || cfg.ProcessLabel != "":
		return "SELinux label"
	case lp.Scheduler != nil || cfg.Scheduler != nil:
		return "scheduler"
	case lp.IOPriority != nil || cfg.IOPriority != nil:
		return "I/O priority"
	case cfg.Personality != nil:
		return "personality"
	case cfg.MemoryPolicy != nil:
		return "memory policy"
	case lp.CPUAffinity != nil || cfg.ExecCPUAffinity != nil:
		return "CPU affinity"
	case cfg.IntelRdt != nil:
		return "Intel RDT"
	case cfg.RootlessEUID || cfg.RootlessCgroups:
		return "rootless"
	case len(cfg.UIDMappings) > 0 || len(cfg.GIDMappings) > 0 || cfg.Namespaces.Contains(configs.NEWUSER):
		// The helper joins user namespaces as nsexec does, but no test covers it yet.
		return "user namespace"
	case len(lp.ExtraFiles) > 0 || lp.PidfdSocket != nil:
		return "extra descriptors"
	case len(lp.SubCgroupPaths) > 0:
		return "sub-cgroup"
	case cfg.Seccomp != nil && seccompNeedsListener(cfg.Seccomp):
		return "seccomp notify"
	case cfg.Cgroups == nil:
		return "no cgroup"
	}
	return ""
}

// seccompNeedsListener reports a profile with user notification: libcontainer hands its
// listener to an agent at ListenerPath, which the helper does not do.
func seccompNeedsListener(s *configs.Seccomp) bool {
	if s.ListenerPath != "" || s.DefaultAction == configs.Notify {
		return true
	}
	for _, sc := range s.Syscalls {
		if sc != nil && sc.Action == configs.Notify {
			return true
		}
	}
	return false
}

// PrepareExecEnv applies libcontainer's environment rules (prepareEnv): the last of
// duplicate names wins, an empty HOME counts as unset, and a malformed entry is an error.
// needHome is true when HOME must come from the container's /etc/passwd.
func PrepareExecEnv(env []string) (out []string, needHome bool, err error) {
	seen := make(map[string]bool, len(env))
	homeSet := false
	for i := len(env) - 1; i >= 0; i-- {
		kv := env[i]
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return nil, false, errors.New("invalid environment variable: missing '='")
		case k == "":
			return nil, false, errors.New("invalid environment variable: name cannot be empty")
		case seen[k]:
			continue
		}
		seen[k] = true
		if strings.IndexByte(kv, 0) >= 0 {
			return nil, false, fmt.Errorf("invalid environment variable %q: contains nul byte (\\x00)", k)
		}
		if k == "HOME" {
			if kv == "HOME=" {
				continue
			}
			homeSet = true
		}
		out = append(out, kv)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, !homeSet, nil
}

// capNames are the capabilities by number, as OCI specs name them: the ones moby's capability
// package knows (TestCapNamesAreKnown), without its names' switch and strings.ToUpper per
// name and container (~90 translated blocks of a cold guest's first container).
var capNames = [...]string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// CapSetsOf converts capability names into the helper's bit sets over every name capNames
// knows (ExecRequest.Caps: the helper gets those its kernel knows).
func CapSetsOf(c *configs.Capabilities) *CapSets {
	if c == nil {
		return nil
	}
	mask := func(names []string) uint64 {
		var m uint64
		for _, n := range names {
			if k := slices.Index(capNames[:], n); k >= 0 {
				m |= 1 << uint(k)
			}
		}
		return m
	}
	return &CapSets{
		Bounding: mask(c.Bounding), Effective: mask(c.Effective), Inheritable: mask(c.Inheritable),
		Permitted: mask(c.Permitted), Ambient: mask(c.Ambient),
	}
}

// execRlimits are the rlimits of the process: its own, or else the container's (with the
// ones the agent would set late restored to their values: the helper sets them all).
func execRlimits(own []configs.Rlimit, ctr []configs.Rlimit, ctrLate []configs.Rlimit) []configs.Rlimit {
	if len(own) > 0 {
		return own
	}
	out := make([]configs.Rlimit, 0, len(ctr))
	for _, rl := range ctr {
		for _, l := range ctrLate {
			if l.Type == rl.Type {
				rl = l
			}
		}
		out = append(out, rl)
	}
	return out
}

// SeccompCompiler returns the BPF program of a seccomp profile and its seccomp(2) flags.
type SeccompCompiler func(*configs.Seccomp) ([]byte, uint32, error)

// BuildExecRequest fills in the helper's request for a process lp of the container id
// (configuration cfg, late rlimits ctrLate); seccomp compiles its profile. The guest's
// fields but the seccomp program (descriptors, LastCap) are left to the caller.
func BuildExecRequest(id string, cfg *configs.Config, lp *Process, ctrLate []configs.Rlimit, seccomp SeccompCompiler, rows, cols uint16) (*ExecRequest, error) {
	env, needHome, err := PrepareExecEnv(lp.Env)
	if err != nil {
		return nil, WithKind(agentproto.KindInvalid, err)
	}
	capCfg := cfg.Capabilities
	if lp.Capabilities != nil {
		capCfg = lp.Capabilities
	}
	nnp := cfg.NoNewPrivileges
	if lp.NoNewPrivileges != nil {
		nnp = *lp.NoNewPrivileges
	}
	r := &ExecRequest{
		UID: uint32(lp.UID), GID: uint32(lp.GID), Caps: CapSetsOf(capCfg), NoNewPrivs: nnp,
		Rlimits: execRlimits(lp.Rlimits, cfg.Rlimits, ctrLate),
		Umask:   cfg.Umask, Cwd: lp.Cwd, Args: lp.Args, Env: env, LookupHome: needHome,
		ConsoleFD: -1, Rows: rows, Cols: cols, OOMScoreAdj: cfg.OomScoreAdj,
	}
	for _, g := range lp.AdditionalGroups {
		r.Groups = append(r.Groups, uint32(g))
	}
	if !cfg.NoNewKeyring {
		r.Keyring = "_ses." + id
	}
	if cfg.Seccomp != nil {
		if r.Seccomp, r.SeccompFlags, err = seccomp(cfg.Seccomp); err != nil {
			return nil, fmt.Errorf("container %q: %w", id, err)
		}
	}
	return r, nil
}
