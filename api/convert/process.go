package convert

import (
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

var rlimits = map[string]int{
	"RLIMIT_CPU": unix.RLIMIT_CPU, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_DATA": unix.RLIMIT_DATA,
	"RLIMIT_STACK": unix.RLIMIT_STACK, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME": unix.RLIMIT_RTTIME,
}

// Process is a container's process as libcontainer's Process has it: the fields that the
// OCI process decides (the agent makes its libcontainer.Process from them, and wires its
// stdio). This package does not import libcontainer's own package, which brings netlink and
// libseccomp with it.
type Process struct {
	Args, Env                   []string
	UID, GID                    int
	AdditionalGroups            []int
	Cwd                         string
	ConsoleWidth, ConsoleHeight uint16
	Capabilities                *configs.Capabilities
	AppArmorProfile             string
	Label                       string
	NoNewPrivileges             *bool
	Rlimits                     []configs.Rlimit
	Init                        bool
	Scheduler                   *configs.Scheduler
	IOPriority                  *configs.IOPriority
	CPUAffinity                 *configs.CPUAffinity
	// What the agent may give a process beyond its spec, which the exec helper does not
	// pass on (FastExecFallback).
	ExtraFiles     []*os.File
	PidfdSocket    *os.File
	SubCgroupPaths map[string]string
}

// NewProcess converts an OCI process into libcontainer's terms, as runc does for create and
// exec (runc's newProcess is in its main package, so it is repeated here).
func NewProcess(p *specs.Process, init bool) (*Process, error) {
	if p == nil || len(p.Args) == 0 {
		return nil, Errorf(agentproto.KindInvalid, "process has no args")
	}
	cwd := p.Cwd
	if cwd == "" {
		cwd = "/"
	}
	noNewPrivs := p.NoNewPrivileges
	lp := &Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             cwd,
		Label:           p.SelinuxLabel,
		NoNewPrivileges: &noNewPrivs,
		AppArmorProfile: p.ApparmorProfile,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
		Init:            init,
	}
	if p.ConsoleSize != nil {
		lp.ConsoleWidth = uint16(p.ConsoleSize.Width)
		lp.ConsoleHeight = uint16(p.ConsoleSize.Height)
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable,
			Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	for _, rl := range p.Rlimits {
		t, ok := rlimits[rl.Type]
		if !ok {
			return nil, Errorf(agentproto.KindInvalid, "unknown rlimit %q", rl.Type)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: rl.Hard, Soft: rl.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, WithKind(agentproto.KindInvalid, fmt.Errorf("execCPUAffinity: %w", err))
	}
	lp.CPUAffinity = aff
	return lp, nil
}

// lateRlimitTypes are the rlimits the agent sets itself, on the process, once it has exec'd
// the container's program, instead of letting libcontainer set them on its init before.
// libcontainer's init is the agent binary, a Go program whose runtime reserves well over a
// gigabyte of address space (PROT_NONE) before it does anything: an RLIMIT_AS below that
// (1 GiB is common) fails the init's own next allocation, e.g. "error adding seccomp filter
// rule for syscall getegid32: cannot allocate memory". The exec'd program starts with a
// fresh address space, which the limit then bounds.
var lateRlimitTypes = map[int]bool{unix.RLIMIT_AS: true}

// SplitLateRlimits returns the rlimits for libcontainer, in which each late one is
// replaced by an unlimited one (what the agent has: the list keeps its shape, so
// libcontainer's choice between a process's rlimits and the container's stays the same),
// and the late ones.
func SplitLateRlimits(rls []configs.Rlimit) (forLibcontainer, late []configs.Rlimit) {
	for _, rl := range rls {
		if lateRlimitTypes[rl.Type] {
			late = append(late, rl)
			rl.Soft, rl.Hard = unix.RLIM_INFINITY, unix.RLIM_INFINITY
		}
		forLibcontainer = append(forLibcontainer, rl)
	}
	return forLibcontainer, late
}
