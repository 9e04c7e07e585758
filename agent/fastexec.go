package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"

	"github.com/runv-project/runv/api/agentproto"
)

// The exec helper (cmd/runv-exec, C, static, in the initramfs) runs EXECCMD's process in a
// running container instead of libcontainer's `runc init`, the Go agent re-executed:
// under TCG its Go runtime start and the parent/child syncs were ~40 ms of a 56 ms exec
// (docs/performance.md). The helper does what libcontainer's setns path does for the
// process attributes it knows (fastExecFallback lists what it does not); this file is the
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
	tagServe    = 31 // u32 socket fd: serve the container's execs (execserver_linux.go)
	tagHint     = 32 // string: where the host found the program in PATH (ExecProcess.ProgramHint)
)

// execMagic starts every request; the helper refuses anything else.
const execMagic = "RVX1"

// maxExecRequest is the helper's limit on a request (its MAX_REQUEST).
const maxExecRequest = 8 << 20

// capSets is the order of the capability sets in tagCaps.
type capSets struct {
	bounding, effective, inheritable, permitted, ambient uint64
}

// execNamespace is one namespace to join: its CLONE_NEW* type and the descriptor number
// the helper has it on.
type execNamespace struct {
	nstype uint32
	fd     int
}

// execRequest is everything the helper needs to start the process.
type execRequest struct {
	namespaces []execNamespace
	uid, gid   uint32
	groups     []uint32
	caps       *capSets // nil: the capabilities stay as they are (libcontainer's rule)
	lastCap    uint32
	noNewPrivs bool
	rlimits    []configs.Rlimit
	umask      *uint32
	cwd        string
	args, env  []string
	// seccomp is the BPF program (raw struct sock_filter array) and its seccomp(2) flags.
	seccomp      []byte
	seccompFlags uint32
	keyring      string // "" with NoNewKeyring
	consoleFD    int    // -1: no terminal
	rows, cols   uint16
	oomScoreAdj  *int
	lookupHome   bool
	// create makes the helper create a container whose init is this process (create
	// mode, createengine.go); nil for an exec.
	create *createRequest
	// traceSteps has the init report its steps (runv.trace=1).
	traceSteps bool
	// programHint is where the host found args[0] in the PATH: the helper tries it
	// before searching ("": search).
	programHint string
	// serve makes the helper the container's exec server, its end of the socket serve
	// (execserver_linux.go); serveFD is its descriptor number in the helper.
	serve   *os.File
	serveFD int
}

// encode serialises the request; strings with a NUL in them cannot be passed to execve and
// are refused here, with the field's name.
func (r *execRequest) encode() ([]byte, error) {
	// The frame's header first, its length filled in at the end. Plain appends, not a
	// bytes.Buffer: nothing else on a cold guest's way to its first container uses one,
	// and its code is translated blocks too (docs/performance.md, "The agent's Go off the
	// cold path, stop 16").
	out := append(make([]byte, 0, 512), execMagic...)
	out = append(out, 0, 0, 0, 0)
	const header = len(execMagic) + 4
	field := func(tag uint16, data []byte) {
		out = binary.LittleEndian.AppendUint16(out, tag)
		out = append(out, 0, 0)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(data)))
		out = append(out, data...)
	}
	framed := func() []byte {
		binary.LittleEndian.PutUint32(out[len(execMagic):], uint32(len(out)-header))
		return out
	}
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	for _, ns := range r.namespaces {
		field(tagNS, binary.LittleEndian.AppendUint32(u32(ns.nstype), uint32(ns.fd)))
	}
	if r.serve != nil {
		// The server has no process of its own: each exec's request names one.
		field(tagServe, u32(uint32(r.serveFD)))
		return framed(), nil
	}
	field(tagUID, u32(r.uid))
	field(tagGID, u32(r.gid))
	var groups []byte
	for _, g := range r.groups {
		groups = binary.LittleEndian.AppendUint32(groups, g)
	}
	field(tagGroups, groups)
	if c := r.caps; c != nil {
		var b []byte
		for _, set := range []uint64{c.bounding, c.effective, c.inheritable, c.permitted, c.ambient} {
			b = binary.LittleEndian.AppendUint64(b, set)
		}
		field(tagCaps, binary.LittleEndian.AppendUint32(b, r.lastCap))
	}
	if r.noNewPrivs {
		field(tagNNP, []byte{1})
	}
	for _, rl := range r.rlimits {
		b := binary.LittleEndian.AppendUint32(nil, uint32(rl.Type))
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint64(b, rl.Soft)
		field(tagRlimit, binary.LittleEndian.AppendUint64(b, rl.Hard))
	}
	if r.umask != nil {
		field(tagUmask, u32(*r.umask))
	}
	for _, s := range [...]struct{ what, s string }{{"cwd", r.cwd}, {"keyring", r.keyring}, {"program hint", r.programHint}} {
		if strings.IndexByte(s.s, 0) >= 0 {
			return nil, errorf(agentproto.KindInvalid, "%s %q contains a NUL byte", s.what, s.s)
		}
	}
	field(tagCwd, []byte(r.cwd))
	if r.programHint != "" {
		field(tagHint, []byte(r.programHint))
	}
	for _, l := range [...]struct {
		tag  uint16
		list []string
	}{{tagArgs, r.args}, {tagEnv, r.env}} {
		var b []byte
		for _, s := range l.list {
			if strings.IndexByte(s, 0) >= 0 {
				return nil, errorf(agentproto.KindInvalid, "argument or environment entry %q contains a NUL byte", s)
			}
			b = append(append(b, s...), 0)
		}
		field(l.tag, b)
	}
	if r.seccomp != nil {
		field(tagSeccomp, append(u32(r.seccompFlags), r.seccomp...))
	}
	if r.keyring != "" {
		field(tagKeyring, []byte(r.keyring))
	}
	if r.consoleFD >= 0 {
		b := binary.LittleEndian.AppendUint32(nil, uint32(r.consoleFD))
		b = binary.LittleEndian.AppendUint16(b, r.rows)
		field(tagConsole, binary.LittleEndian.AppendUint16(b, r.cols))
	}
	if r.oomScoreAdj != nil {
		field(tagOOMScore, []byte(strconv.Itoa(*r.oomScoreAdj)))
	}
	if r.lookupHome {
		field(tagHome, nil)
	}
	if r.create != nil {
		if err := r.create.encode(field); err != nil {
			return nil, err
		}
	}
	if r.traceSteps {
		field(tagTrace, nil)
	}
	if n := len(out) - header; n > maxExecRequest {
		return nil, errorf(agentproto.KindInvalid, "the process is too large for the exec helper (%d bytes of args, env and seccomp program, limit %d)", n, maxExecRequest)
	}
	return framed(), nil
}

// fastExecFallback is the one place that decides which engine runs an exec: "" when the
// helper can start the process exactly as libcontainer would, else why not (the exec
// then goes through libcontainer's `runc init`). cfg is the container's configuration, lp
// the process as newProcess made it.
func fastExecFallback(cfg *configs.Config, lp *libcontainer.Process) string {
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

// prepareExecEnv applies libcontainer's environment rules (prepareEnv): the last of
// duplicate names wins, an empty HOME counts as unset, and a malformed entry is an error.
// needHome is true when HOME must come from the container's /etc/passwd.
func prepareExecEnv(env []string) (out []string, needHome bool, err error) {
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

// Report records of the helper.
const (
	reportPid   = 'P'
	reportError = 'E'
	// reportReady: create mode's init is set up and waits for its start.
	reportReady = 'R'
	// reportTrace: a step of create mode's init, its text the step (traceSteps).
	reportTrace = 'T'
	maxReport   = 512
)

// helperReport is one record the helper wrote.
type helperReport struct {
	kind  uint32
	value int32
	text  string
}

// readReport reads one record; io.EOF when the helper (and the process it forked) closed
// the report pipe without another one.
func readReport(r io.Reader) (helperReport, error) {
	var h [12]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return helperReport{}, io.EOF
		}
		return helperReport{}, fmt.Errorf("read the exec helper's report: %w", err)
	}
	rep := helperReport{kind: binary.LittleEndian.Uint32(h[0:]), value: int32(binary.LittleEndian.Uint32(h[4:]))}
	n := binary.LittleEndian.Uint32(h[8:])
	if n > maxReport || (rep.kind != reportPid && rep.kind != reportError && rep.kind != reportReady && rep.kind != reportTrace) {
		return helperReport{}, fmt.Errorf("malformed report from the exec helper (kind %#x, %d bytes)", rep.kind, n)
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(r, text); err != nil {
		return helperReport{}, fmt.Errorf("read the exec helper's report: %w", err)
	}
	rep.text = string(text)
	return rep, nil
}

// helperError turns the helper's failure report into an error. A program that cannot be
// found or run gets the words of libcontainer's (Go's exec.LookPath and execve), so that
// classifyStartError (startProcess) gives the same KindNotExecutable error, exit code and
// message as with libcontainer.
func helperError(rep helperReport, argv0 string) error {
	errno := syscall.Errno(rep.value)
	switch rep.text {
	case "lookpath: not in PATH":
		return lookPathError(argv0, "executable file not found in $PATH")
	case "lookpath":
		// Go's findExecutable: stat's error as a path error, its own checks bare.
		if errno == syscall.EACCES || errno == syscall.EISDIR {
			return lookPathError(argv0, errno.Error())
		}
		return lookPathError(argv0, "stat "+argv0+": "+errno.Error())
	case "execve":
		return lookPathError(argv0, errno.Error())
	}
	return fmt.Errorf("exec helper: %s: %w", rep.text, errno)
}

// lookPathError is a not-executable error in libcontainer's words.
func lookPathError(argv0, reason string) error {
	return fmt.Errorf("exec: %q: %s", argv0, reason)
}
