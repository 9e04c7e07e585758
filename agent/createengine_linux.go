package agent

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// engineContainer is a container the create engine made: its init is a child of the agent
// that the helper forked into the container's namespaces, its cgroup is managed here
// (containerCgroup: as libcontainer's cgroup manager manages its own container's).
type engineContainer struct {
	id      string
	helper  string
	seccomp convert.SeccompCompiler
	// initSpec is the init's process in the conversion's terms (convert.NewProcess of the
	// process Start gets), nil with converted.
	initSpec *convert.Process
	late     []configs.Rlimit // the container's late rlimits: the helper sets them all
	tr       *stepTrace
	// converted is the host's conversion of the spec (agentproto.Converted), which the
	// init is made from, nil when the agent converted it: cfg is then the container's
	// configuration from the start, else only once the agent needs it and converts the
	// spec itself (adoptConfig).
	converted *agentproto.Converted
	// privatePID: the container has a PID namespace of its own (SIGKILL to its init
	// kills it all).
	privatePID bool

	mu      sync.Mutex
	cfg     configs.Config
	cgroup  *containerCgroup
	init    *childProcess
	start   *os.File // the start pipe's write end until Exec
	report  *os.File // the init's report pipe until Exec
	started bool
	argv0   string // the init's program, for the words of an exec error
}

var _ containerEngine = (*engineContainer)(nil)

// newEngineContainer prepares a container of the create engine; Start makes it. late are
// the rlimits split off cfg (convert.SplitLateRlimits), seccomp compiles its profile.
func newEngineContainer(id, helper string, cfg *configs.Config, init *convert.Process, late []configs.Rlimit, seccomp convert.SeccompCompiler, tr *stepTrace) (*engineContainer, error) {
	ownCgroupNS := cfg.Namespaces.Contains(configs.NEWCGROUP) && cfg.Namespaces.PathOf(configs.NEWCGROUP) == ""
	cg, err := newContainerCgroup(cfg.Cgroups, ownCgroupNS)
	if err != nil {
		return nil, fmt.Errorf("container %q: cgroup manager: %w", id, err)
	}
	return &engineContainer{
		id: id, helper: helper, seccomp: seccomp, initSpec: init, late: late, tr: tr, cfg: *cfg, cgroup: cg,
		privatePID: cfg.Namespaces.IsPrivate(configs.NEWPID),
	}, nil
}

// newConvertedEngineContainer prepares a container of the create engine from the host's
// conversion of its spec (its configuration comes later: adoptConfig).
func newConvertedEngineContainer(id, helper string, cv *agentproto.Converted, tr *stepTrace) *engineContainer {
	cg := newConvertedCgroup(cv)
	e := &engineContainer{
		id: id, helper: helper, tr: tr, cgroup: cg, converted: cv,
		privatePID: cv.CloneFlags&unix.CLONE_NEWPID != 0,
	}
	e.cfg.Cgroups = cg.cfg
	return e
}

// adoptConfig gives a container made from the host's conversion its configuration, the
// agent's own conversion of the same spec; the cgroup stays the one the container has
// (the warm-up's spare, perhaps).
func (e *engineContainer) adoptConfig(cfg *configs.Config) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.converted == nil {
		return
	}
	e.cfg = *cfg
	e.cfg.Cgroups = e.cgroup.cfg
	e.converted = nil
}

// initProcess is the init Start made, as the agent waits for and signals it.
func (e *engineContainer) initProcess() (*childProcess, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.init, e.init.Pid
}

// Start creates the cgroup, has the helper make the init in it and sets the cgroup's
// resources (device filter included); it returns once the init is ready to exec its
// program.
func (e *engineContainer) Start(lp *libcontainer.Process) (err error) {
	if !lp.Init {
		return errors.New("the create engine starts a container's init only")
	}
	if err := e.cgroup.create(); err != nil {
		return fmt.Errorf("container %q: create the cgroup: %w", e.id, err)
	}
	defer func() {
		if err != nil {
			_ = e.cgroup.destroy()
		}
	}()
	e.tr.mark("engine: cgroup made")
	var req *convert.ExecRequest
	if e.converted != nil {
		if req, err = convert.RequestOf(e.converted); err == nil {
			// Encoded in its SpecFields; the agent words an exec error with the program.
			req.Args = lp.Args
		}
	} else {
		req, err = convert.CreateExecRequest(e.id, &e.cfg, e.initSpec, e.late, e.seccomp)
	}
	if err != nil {
		return err
	}
	if req.LastCap, err = guestLastCap(); err != nil {
		return err
	}
	req.Rows, req.Cols = lp.ConsoleHeight, lp.ConsoleWidth
	dir := e.cgroup.dir
	req.Create.CgroupDir = dir
	req.TraceSteps = e.tr != nil
	var namespaces []nsFile
	defer func() {
		for _, ns := range namespaces {
			ns.f.Close()
		}
	}()
	for _, ns := range e.cfg.Namespaces {
		if ns.Path == "" {
			continue
		}
		f, err := os.Open(ns.Path)
		if err != nil {
			return fmt.Errorf("container %q: join the %s namespace: %w", e.id, configs.NsName(ns.Type), err)
		}
		namespaces = append(namespaces, nsFile{nstype: uint32(ns.Syscall()), f: f})
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("container %q: start pipe: %w", e.id, err)
	}
	defer startR.Close()
	console, _ := any(lp.ConsoleSocket).(*os.File)
	stdio := [3]*os.File{}
	for i, std := range []any{lp.Stdin, lp.Stdout, lp.Stderr} {
		stdio[i], _ = std.(*os.File)
	}
	e.tr.mark("engine: request built")
	proc, report, err := runExecHelper(e.helper, req, stdio, namespaces, console, startR, []string{dir}, e.tr)
	if err != nil {
		startW.Close()
		return err
	}
	// The resources, the device filter among them, once the init made its device nodes and
	// opened what it needed, before its program runs: where libcontainer sets them too
	// (the init's "hooks" sync, after the rootfs's devices), and with the helper gone (a
	// pids limit of 1 counts the init alone).
	set := func() error { return e.cgroup.set(e.cgroup.cfg.Resources) }
	if e.converted != nil {
		set = func() error { return e.cgroup.setConverted(e.converted.DeviceProgram) }
	}
	if err := set(); err != nil {
		proc.killAndReap()
		report.Close()
		startW.Close()
		return fmt.Errorf("container %q: set the cgroup's resources: %w", e.id, err)
	}
	e.tr.mark("engine: cgroup resources set (device filter)")
	e.mu.Lock()
	e.init, e.start, e.report, e.argv0 = proc, startW, report, lp.Args[0]
	e.mu.Unlock()
	return nil
}

// Run is libcontainer's exec path, which a container it did not make cannot take.
func (e *engineContainer) Run(*libcontainer.Process) error {
	return errorf(agentproto.KindInvalid, "container %q was made by the create engine: this process needs libcontainer's runc init, which cannot exec into it", e.id)
}

// Exec lets the init exec its program and waits until it did (or failed to).
func (e *engineContainer) Exec() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.start == nil {
		return libcontainer.ErrRunning
	}
	_, err := e.start.Write([]byte{0})
	e.start.Close()
	e.start = nil
	defer func() {
		e.report.Close()
		e.report = nil
	}()
	if err != nil {
		return fmt.Errorf("container %q: its init is gone: %w", e.id, err)
	}
	if err := awaitExec(newReportReader(e.report, execHelperWait), e.argv0); err != nil {
		return err
	}
	e.started = true
	return nil
}

// exitedLocked tells whether the init is gone (a zombie counts: it runs nothing). The init
// is the agent's child (the helper forked it with CLONE_PARENT): waitid tells without
// reaping it.
func (e *engineContainer) exitedLocked() bool {
	if e.init == nil {
		return true
	}
	if err := e.init.Signal(syscall.Signal(0)); err != nil {
		return true
	}
	return childExited(e.init.Pid)
}

func (e *engineContainer) statusLocked() (libcontainer.Status, error) {
	if e.exitedLocked() {
		return libcontainer.Stopped, nil
	}
	st, err := e.cgroup.freezerState()
	if err != nil {
		return libcontainer.Stopped, fmt.Errorf("container %q: freezer state: %w", e.id, err)
	}
	switch {
	case st == cgroups.Frozen:
		return libcontainer.Paused, nil
	case !e.started:
		return libcontainer.Created, nil
	}
	return libcontainer.Running, nil
}

func (e *engineContainer) Status() (libcontainer.Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.statusLocked()
}

func (e *engineContainer) State() (*libcontainer.State, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := &libcontainer.State{CgroupPaths: map[string]string{"": e.cgroup.dir}}
	st.ID, st.Config = e.id, e.cfg
	if e.init != nil {
		st.InitProcessPid = e.init.Pid
	}
	return st, nil
}

func (e *engineContainer) Config() configs.Config {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

// Signal is libcontainer's: SIGKILL to a container without a PID namespace of its own
// kills its whole cgroup, any other signal goes to the init (through its pidfd: a
// recycled pid is never hit).
func (e *engineContainer) Signal(sig os.Signal) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if sig == unix.SIGKILL && !e.privatePID {
		if !e.cgroup.exists() {
			if e.exitedLocked() {
				return libcontainer.ErrNotRunning
			}
			return fmt.Errorf("container %q: no cgroup to kill", e.id)
		}
		return e.killAllLocked()
	}
	if e.exitedLocked() {
		return libcontainer.ErrNotRunning
	}
	if err := e.init.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return libcontainer.ErrNotRunning
		}
		return fmt.Errorf("container %q: signal init: %w", e.id, err)
	}
	return nil
}

// killAllLocked kills every process of the cgroup (cgroup.kill).
func (e *engineContainer) killAllLocked() error {
	if err := cgroups.WriteFile(e.cgroup.dir, "cgroup.kill", "1"); err != nil {
		return fmt.Errorf("container %q: kill its cgroup: %w", e.id, err)
	}
	return nil
}

func (e *engineContainer) Processes() ([]int, error) {
	return e.cgroup.pids()
}

func (e *engineContainer) Pause() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, err := e.statusLocked()
	if err != nil {
		return err
	}
	if st != libcontainer.Running && st != libcontainer.Created {
		return libcontainer.ErrNotRunning
	}
	return e.cgroup.freeze(cgroups.Frozen)
}

func (e *engineContainer) Resume() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, err := e.statusLocked()
	if err != nil {
		return err
	}
	if st != libcontainer.Paused {
		return libcontainer.ErrNotPaused
	}
	return e.cgroup.freeze(cgroups.Thawed)
}

func (e *engineContainer) Stats() (*libcontainer.Stats, error) {
	st, err := e.cgroup.stats()
	if err != nil {
		return nil, err
	}
	return &libcontainer.Stats{CgroupStats: st}, nil
}

func (e *engineContainer) Set(cfg configs.Config) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if st, err := e.statusLocked(); err != nil || st == libcontainer.Stopped {
		return libcontainer.ErrNotRunning
	}
	if err := e.cgroup.set(cfg.Cgroups.Resources); err != nil {
		return err
	}
	e.cfg = cfg
	return nil
}

// Destroy kills what is left of the container (an init that never started included) and
// removes its cgroup.
func (e *engineContainer) Destroy() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range []**os.File{&e.start, &e.report} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
	if e.cgroup.exists() {
		if err := e.killAllLocked(); err != nil {
			return err
		}
	}
	if err := e.cgroup.destroy(); err != nil {
		return err
	}
	if e.id == warmupID {
		// The warm-up (of a template or a pooled VM) leaves a spare cgroup for the pod's
		// first container. Without one, that container makes its own: nothing to report.
		_ = spareCgroups.make()
	}
	return nil
}
