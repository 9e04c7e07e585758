package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/moby/sys/devices"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
	"github.com/runv-project/runv/api/ocispec"
)

const sigKill = unix.SIGKILL

// container is one libcontainer container and its processes.
type container struct {
	id  string
	log *logger
	lc  containerEngine
	// spec is the adjusted spec the container was created from; UPDATECONTAINER merges
	// into its resources.
	spec *specs.Spec
	// lateRlimits are the container's rlimits that the agent sets after exec (for processes
	// without rlimits of their own); cfg.Rlimits has them unlimited.
	lateRlimits []configs.Rlimit
	// unconverted is the spec as the host sent it, and the guest's values, for a container
	// made from the host's conversion: spec, lateRlimits and the engine's configuration
	// are made from them when first needed (convertedOnce).
	unconverted *unconvertedSpec
	convertOnce sync.Once
	convertErr  error
	// fast is what execs through the exec helper share (fastexec_linux.go).
	fast fastExecState
	// pins hold the directories of the first exec's PATH while the container exists
	// (pinPath, started once: pinOnce).
	pins    *pathPins
	pinOnce sync.Once

	mu    sync.Mutex
	init  *process
	procs map[string]*process // live processes, init included
}

func (c *container) process(id string) (*process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == "" || id == agentproto.InitProcessID {
		return c.init, nil
	}
	p, ok := c.procs[id]
	if !ok {
		return nil, errorf(agentproto.KindNotFound, "container %q has no process %q", c.id, id)
	}
	return p, nil
}

func (c *container) processList() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*process, 0, len(c.procs))
	for _, p := range c.procs {
		if p.handle != nil { // not an exec still being started
			out = append(out, p)
		}
	}
	return out
}

// forget drops an exec'd process once its exit was reported: exec ids are not reused, and
// keeping them would grow the map of a long-running container forever (health probes).
func (c *container) forget(p *process) {
	c.mu.Lock()
	if c.procs[p.id] == p {
		delete(c.procs, p.id)
	}
	c.mu.Unlock()
}

// killAll sends SIGKILL to every process of the container.
func (c *container) killAll() error {
	return c.signalAll(unix.SIGKILL)
}

// signalAll signals every process in the container's cgroup. SIGKILL goes through
// libcontainer, which kills init (and with a private pid namespace, the kernel kills the
// rest) or, with a shared pid namespace, freezes the cgroup and kills every member.
func (c *container) signalAll(sig unix.Signal) error {
	if sig == unix.SIGKILL {
		err := c.lc.Signal(sig)
		if err == nil || !errors.Is(err, libcontainer.ErrNotRunning) {
			return err
		}
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return fmt.Errorf("list processes of container %q: %w", c.id, err)
	}
	if len(pids) == 0 && c.init.exited() {
		return errorf(agentproto.KindState, "container %q is not running", c.id)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && err != unix.ESRCH {
			return fmt.Errorf("signal pid %d of container %q: %w", pid, c.id, err)
		}
	}
	return nil
}

// lookup returns a container by id.
func (a *Agent) lookup(id string) (*container, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[id]
	if !ok {
		return nil, errorf(agentproto.KindNotFound, "no container %q", id)
	}
	return c, nil
}

// lookupProcess finds a process of a container.
func (a *Agent) lookupProcess(container, process string) (*container, *process, error) {
	c, err := a.lookup(container)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(process)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// sandboxPIDLocked is the guest path of the PID namespace of the pod's sandbox (its first
// container still there), "" when there is none or its init exited. Caller holds a.mu.
func (a *Agent) sandboxPIDLocked() string {
	c, ok := a.containers[a.sandbox]
	if !ok || c.init == nil || c.init.exited() {
		return ""
	}
	return ocispec.ProcPath(c.init.pid, specs.PIDNamespace)
}

// newContainer creates a container whose init is created but waits for STARTCONTAINER.
func (a *Agent) newContainer(_ context.Context, req *Request) (any, error) {
	tr := a.trace.begin("NEWCONTAINER")
	m, err := req.Frame.UnmarshalContainer()
	if err != nil {
		return nil, withKind(agentproto.KindInvalid, err)
	}
	tr.mark("decoded")
	if m.ID == "" {
		return nil, errorf(agentproto.KindInvalid, "NEWCONTAINER without a container id")
	}
	a.mu.Lock()
	switch {
	case a.destroying:
		a.mu.Unlock()
		return nil, errorf(agentproto.KindState, "the pod is being destroyed")
	case a.pod == nil:
		a.mu.Unlock()
		return nil, errorf(agentproto.KindState, "container %q: the pod is not started (STARTPOD first)", m.ID)
	case a.containers[m.ID] != nil || a.creating[m.ID]:
		a.mu.Unlock()
		return nil, errorf(agentproto.KindAlreadyExists, "container %q already exists", m.ID)
	}
	a.creating[m.ID] = true
	g := convert.GuestSpec{
		ContainerID: m.ID, ShareDir: agentproto.SharePath, Rootfs: m.Rootfs,
		SharePID: m.SharePID, SandboxPID: a.sandboxPIDLocked(),
		ResolvConf: a.pod.resolvConf, VMDevices: vmDevices,
	}
	if m.Member {
		g.PodNamespaces = a.pod.namespaces
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.creating, m.ID)
		a.mu.Unlock()
	}()

	c, p, err := a.createContainer(&m, g, tr)
	if err != nil {
		a.trace.end(tr, a.log.with("ctr", m.ID))
		return nil, err
	}
	a.mu.Lock()
	if a.pod.namespaces == nil {
		// The pod's first container: its namespaces become the pod's.
		ns, err := pinPodNamespaces(p.pid, podNamespaceDir)
		if err != nil {
			a.mu.Unlock()
			a.discardCreated(c, p)
			a.trace.end(tr, c.log)
			return nil, err
		}
		a.pod.namespaces = ns
	}
	a.containers[m.ID] = c
	if _, ok := a.containers[a.sandbox]; !ok {
		a.sandbox = m.ID
	}
	a.mu.Unlock()
	if m.Start {
		if err := c.execProgram(tr); err != nil {
			// The host is told the container could not be made: nothing of it stays.
			a.mu.Lock()
			delete(a.containers, m.ID)
			if a.sandbox == m.ID {
				a.sandbox = ""
			}
			a.mu.Unlock()
			a.discardCreated(c, p)
			a.trace.end(tr, c.log)
			return nil, err
		}
	}
	if err := req.Ack(agentproto.ProcessStarted{Pid: p.pid, Started: m.Start}); err != nil {
		c.log.Errorf("ACK NEWCONTAINER: %v", err)
	}
	tr.mark("acked")
	a.trace.end(tr, c.log)
	a.runProcess(p)
	// Debug only, as "pod started" (startPod): the host logs the creation.
	if c.unconverted != nil {
		c.log.Debugf("created, init pid %d, from the host's conversion", p.pid)
	} else {
		c.log.Debugf("created, init pid %d", p.pid)
	}
	return nil, nil
}

// discardCreated undoes createContainer for a container the host never learnt about: its
// init is killed and reaped, its streams reset, the container destroyed.
func (a *Agent) discardCreated(c *container, p *process) {
	_ = p.handle.Signal(sigKill)
	_, _ = p.handle.wait()
	a.reaper.untrack(p.pid)
	p.releasePins()
	p.io.abort()
	if err := c.lc.Destroy(); err != nil {
		c.log.Errorf("destroy after a failed create: %v", err)
	}
	c.releaseExecState()
}

// unconvertedSpec is what a container made from the host's conversion is converted from
// when the agent needs the conversion itself: the spec, decoded then too.
type unconvertedSpec struct {
	received *agentproto.ReceivedContainer
	guest    convert.GuestSpec
}

func (a *Agent) createContainer(m *agentproto.ReceivedContainer, g convert.GuestSpec, tr *stepTrace) (*container, *process, error) {
	c := &container{id: m.ID, log: a.log.with("ctr", m.ID), procs: make(map[string]*process), pins: &pathPins{}}
	// The process as the host sent it: the spec's adjustment leaves it as it is.
	var init *specs.Process
	if m.Converted != nil && a.createEngine && !m.Member && g.ResolvConf == "" {
		// The host converted the spec as this guest would (convert.ForGuest): the
		// conversion, and the spec's decode but for the few fields of its process that
		// the create engine's init takes (convertedInitProcess, the terminal), wait until
		// something needs them (converted).
		if init = m.InitProcess(); init == nil || len(init.Args) == 0 {
			return nil, nil, errorf(agentproto.KindInvalid, "container %q: spec has no process args", m.ID)
		}
		c.unconverted = &unconvertedSpec{received: m, guest: g}
		c.lc = newConvertedEngineContainer(m.ID, a.execHelper, m.Converted, tr)
		tr.mark("host's conversion taken")
	} else {
		in, err := m.Spec()
		if err != nil {
			return nil, nil, withKind(agentproto.KindInvalid, err)
		}
		spec, cfg, late, err := convertSpec(in, g, tr)
		if err != nil {
			return nil, nil, err
		}
		c.spec, c.lateRlimits = spec, late
		if c.lc, err = a.newEngine(c, cfg, spec.Process, tr); err != nil {
			return nil, nil, err
		}
		init = in.Process
	}
	p, err := a.startProcess(c, agentproto.InitProcessID, init, m.IO, m.ConsoleRows, m.ConsoleCols, true, "", tr)
	if err != nil {
		if derr := c.lc.Destroy(); derr != nil {
			c.log.Errorf("destroy after failed create: %v", derr)
		}
		return nil, nil, err
	}
	c.init = p
	c.procs[p.id] = p
	return c, p, nil
}

// convertSpec converts the host's spec for the guest g (in place): the adjusted spec, its
// libcontainer configuration and the container's late rlimits. It writes the spec's net
// sysctls (the pod's).
func convertSpec(in *specs.Spec, g convert.GuestSpec, tr *stepTrace) (*specs.Spec, *configs.Config, []configs.Rlimit, error) {
	spec, err := convert.AdjustSpec(in, g)
	if err != nil {
		return nil, nil, nil, err
	}
	tr.mark("spec adjusted")
	convert.ReadonlyDeviceBinds(spec, spec.Root.Path, func(p string) (fs.FileInfo, error) { return os.Lstat(p) })
	tr.mark("device binds checked")
	// The container runs in the VM's network namespace, the pod's: its net.* sysctls are set
	// here (libcontainer refuses them without a network namespace of the container's own).
	if err := writeSysctls("/proc/sys", convert.TakeNetSysctls(spec)); err != nil {
		return nil, nil, nil, withKind(agentproto.KindInvalid, fmt.Errorf("container %q: %w", g.ContainerID, err))
	}
	tr.mark("sysctls written")
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: g.ContainerID, Spec: spec})
	if err != nil {
		return nil, nil, nil, withKind(agentproto.KindInvalid, fmt.Errorf("container %q: spec: %w", g.ContainerID, err))
	}
	tr.mark("specconv")
	var late []configs.Rlimit
	cfg.Rlimits, late = convert.SplitLateRlimits(cfg.Rlimits)
	return spec, cfg, late, nil
}

// converted makes sure c has its spec, late rlimits and configuration: for a container
// made from the host's conversion, the agent's own conversion of the same spec, once.
func (c *container) converted() error {
	if c.unconverted == nil {
		return nil
	}
	c.convertOnce.Do(func() {
		u := c.unconverted
		in, err := u.received.Spec()
		if err != nil {
			c.convertErr = withKind(agentproto.KindInvalid, err)
			return
		}
		spec, cfg, late, err := convertSpec(in, u.guest, nil)
		if err != nil {
			c.convertErr = err
			return
		}
		c.mu.Lock()
		c.spec, c.lateRlimits = spec, late
		c.mu.Unlock()
		c.lc.(*engineContainer).adoptConfig(cfg)
	})
	return c.convertErr
}

// newEngine returns the engine that makes container c from cfg: the create engine, unless
// the boot flags or convert.CreateFallback rule it out for this container, else libcontainer.
func (a *Agent) newEngine(c *container, cfg *configs.Config, process *specs.Process, tr *stepTrace) (containerEngine, error) {
	reason := "runv.create=libcontainer or no exec helper"
	var init *convert.Process
	if a.createEngine {
		var err error
		if init, err = convert.NewProcess(process, true); err != nil {
			return nil, err
		}
		reason = convert.CreateFallback(cfg, init)
	}
	if reason == "" {
		return newEngineContainer(c.id, a.execHelper, cfg, init, c.lateRlimits, c.seccompProgram, tr)
	}
	c.log.Infof("made by libcontainer's runc init: the create engine does not do %s", reason)
	lc, err := libcontainer.Create(libcontainerRoot, c.id, cfg)
	if err != nil {
		return nil, fmt.Errorf("create container %q: %w", c.id, err)
	}
	tr.mark("libcontainer.Create")
	return lc, nil
}

// initHandle is the init that Start made, as the agent waits for and signals it.
func initHandle(lc containerEngine, lp *libcontainer.Process) (procHandle, int) {
	if e, ok := lc.(*engineContainer); ok {
		return e.initProcess()
	}
	pid, _ := lp.Pid()
	return libcontainerProcess{lp}, pid
}

// startContainer lets the created init exec the container's process.
func (a *Agent) startContainer(_ context.Context, req *Request) (any, error) {
	tr := a.trace.begin("STARTCONTAINER")
	var m agentproto.ContainerRef
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	c, err := a.lookup(m.Container)
	if err != nil {
		return nil, err
	}
	defer a.trace.end(tr, c.log)
	return nil, c.start(tr)
}

// start lets the created init exec the container's program (STARTCONTAINER), once it
// checked the container is created, and returns once it runs it.
func (c *container) start(tr *stepTrace) error {
	st, err := c.lc.Status()
	if err != nil {
		return fmt.Errorf("container %q: %w", c.id, err)
	}
	if st != libcontainer.Created {
		return errorf(agentproto.KindState, "container %q is %s, not created", c.id, st)
	}
	tr.mark("status")
	return c.execProgram(tr)
}

// execProgram lets the created init exec the container's program and returns once it runs
// it. NEWCONTAINER with Start calls it without start's check of the status: the container
// it made is created (an init that died since fails the Exec, which says so), and the check
// (a signal 0 to the init's pidfd, a waitid, cgroup.freeze's read) was ~100 blocks of
// code a cold guest translates for nothing else on that path.
func (c *container) execProgram(tr *stepTrace) error {
	if err := c.lc.Exec(); err != nil {
		if c.init.exited() {
			return errorf(agentproto.KindState, "start container %q: %w", c.id, err)
		}
		return fmt.Errorf("start container %q: %w", c.id, err)
	}
	tr.mark("exec fifo read")
	_, engine := c.lc.(*engineContainer)
	c.init.execed(engine)
	c.init.pinProgram()
	tr.mark("program exec'd")
	c.log.Debugf("started")
	return nil
}

// execCmd runs an extra process in a container (setns into its namespaces).
func (a *Agent) execCmd(_ context.Context, req *Request) (any, error) {
	tr := a.trace.begin("EXECCMD")
	var m agentproto.ExecProcess
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	tr.mark("decoded")
	if m.ID == "" || m.ID == agentproto.InitProcessID {
		return nil, errorf(agentproto.KindInvalid, "EXECCMD: invalid process id %q", m.ID)
	}
	if m.Process == nil {
		return nil, errorf(agentproto.KindInvalid, "EXECCMD %q: no process", m.ID)
	}
	c, err := a.lookup(m.Container)
	if err != nil {
		return nil, err
	}
	if err := c.converted(); err != nil {
		return nil, err
	}
	c.pinOnce.Do(func() { go pinPath(c.spec.Root.Path, m.Process, c.pins) })
	st, err := c.lc.Status()
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", c.id, err)
	}
	if st != libcontainer.Running && st != libcontainer.Created {
		return nil, errorf(agentproto.KindState, "cannot exec in container %q: it is %s", c.id, st)
	}
	c.mu.Lock()
	if _, dup := c.procs[m.ID]; dup {
		c.mu.Unlock()
		return nil, errorf(agentproto.KindAlreadyExists, "container %q already has a process %q", c.id, m.ID)
	}
	// Reserve the id while the (slow) start runs.
	c.procs[m.ID] = &process{id: m.ID, done: make(chan struct{}), reported: make(chan struct{})}
	c.mu.Unlock()

	p, err := a.startProcess(c, m.ID, m.Process, m.IO, m.ConsoleRows, m.ConsoleCols, false, m.ProgramHint, tr)
	c.mu.Lock()
	if err != nil {
		delete(c.procs, m.ID)
		c.mu.Unlock()
		return nil, err
	}
	c.procs[m.ID] = p
	c.mu.Unlock()
	if err := req.Ack(agentproto.ProcessStarted{Pid: p.pid}); err != nil {
		p.log.Errorf("ACK EXECCMD: %v", err)
	}
	tr.mark("acked")
	a.trace.end(tr, p.log)
	a.runProcess(p)
	return nil, nil
}

func (a *Agent) signalProcess(_ context.Context, req *Request) (any, error) {
	var m agentproto.SignalProcess
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	if m.Signal < 0 || m.Signal > 64 {
		return nil, errorf(agentproto.KindInvalid, "invalid signal %d", m.Signal)
	}
	sig := unix.Signal(m.Signal)
	c, err := a.lookup(m.Container)
	if err != nil {
		return nil, err
	}
	if m.All {
		return nil, c.signalAll(sig)
	}
	p, err := c.process(m.Process)
	if err != nil {
		return nil, err
	}
	if p.handle == nil || p.exited() {
		return nil, errorf(agentproto.KindState, "process %q of container %q is not running", m.Process, c.id)
	}
	p.awaitHandler(sig)
	if p == c.init {
		// libcontainer checks the init's start time, so a recycled pid is never hit.
		err = c.lc.Signal(sig)
	} else {
		// childProcess signals through a pidfd: no pid reuse race either.
		err = p.handle.Signal(sig)
	}
	if err != nil {
		return nil, fmt.Errorf("signal %d to process %q of container %q: %w", m.Signal, m.Process, c.id, err)
	}
	return nil, nil
}

func (a *Agent) winSize(_ context.Context, req *Request) (any, error) {
	var m agentproto.WindowSize
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	c, p, err := a.lookupProcess(m.Container, m.Process)
	if err != nil {
		return nil, err
	}
	if p.io == nil || !p.terminal {
		// As containerd's shims do: resizing a process without a terminal is a no-op.
		return nil, nil
	}
	if err := p.io.resize(m.Rows, m.Cols); err != nil && !p.exited() {
		return nil, fmt.Errorf("resize terminal of %q/%q: %w", c.id, m.Process, err)
	}
	return nil, nil
}

func (a *Agent) closeStdin(_ context.Context, req *Request) (any, error) {
	var m agentproto.ProcessRef
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	_, p, err := a.lookupProcess(m.Container, m.Process)
	if err != nil {
		return nil, err
	}
	if p.io != nil {
		p.io.closeStdin()
	}
	return nil, nil
}

// removeContainer destroys a stopped container.
func (a *Agent) removeContainer(_ context.Context, req *Request) (any, error) {
	var m agentproto.ContainerRef
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	c, err := a.lookup(m.Container)
	if err != nil {
		return nil, err
	}
	if !c.init.exited() {
		return nil, errorf(agentproto.KindState, "container %q is not stopped", c.id)
	}
	if err := c.lc.Destroy(); err != nil {
		return nil, fmt.Errorf("destroy container %q: %w", c.id, err)
	}
	c.releaseExecState()
	a.mu.Lock()
	delete(a.containers, c.id)
	a.mu.Unlock()
	c.log.Debugf("removed")
	return nil, nil
}

func (a *Agent) pauseContainer(_ context.Context, req *Request) (any, error) {
	return nil, a.withContainer(req, func(c *container) error { return c.lc.Pause() })
}

func (a *Agent) resumeContainer(_ context.Context, req *Request) (any, error) {
	return nil, a.withContainer(req, func(c *container) error { return c.lc.Resume() })
}

func (a *Agent) listProcesses(_ context.Context, req *Request) (any, error) {
	var list agentproto.ProcessList
	err := a.withContainer(req, func(c *container) error {
		pids, err := c.lc.Processes()
		list.Pids = pids
		return err
	})
	if list.Pids == nil {
		list.Pids = []int{}
	}
	list.Processes = describeProcesses(list.Pids)
	return list, err
}

// describeProcesses reads the command line of each pid for `runv ps`. A process that exited
// meanwhile is left out, as the protocol allows.
func describeProcesses(pids []int) []agentproto.ProcessInfo {
	out := make([]agentproto.ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			continue
		}
		var args []string
		if b = bytes.TrimRight(b, "\x00"); len(b) > 0 {
			args = strings.Split(string(b), "\x00")
		}
		out = append(out, agentproto.ProcessInfo{Pid: pid, Cmdline: args})
	}
	return out
}

func (a *Agent) stats(_ context.Context, req *Request) (any, error) {
	var out agentproto.Stats
	err := a.withContainer(req, func(c *container) error {
		st, err := c.lc.Stats()
		if err != nil {
			return err
		}
		if cg := st.CgroupStats; cg != nil {
			cpu, mem := cg.CpuStats, cg.MemoryStats
			out.CPUUsageNanos = cpu.CpuUsage.TotalUsage
			out.CPUUserNanos, out.CPUSystemNanos = cpu.CpuUsage.UsageInUsermode, cpu.CpuUsage.UsageInKernelmode
			out.CPUPeriods, out.CPUThrottledPeriods = cpu.ThrottlingData.Periods, cpu.ThrottlingData.ThrottledPeriods
			out.CPUThrottledNanos = cpu.ThrottlingData.ThrottledTime
			out.MemoryUsageBytes, out.MemoryLimitBytes = mem.Usage.Usage, mem.Usage.Limit
			out.SwapUsageBytes, out.SwapLimitBytes = mem.SwapOnlyUsage.Usage, mem.SwapOnlyUsage.Limit
			out.MemoryStat = mem.Stats
			out.Pids, out.PidsLimit = cg.PidsStats.Current, cg.PidsStats.Limit
		}
		out.MemoryEvents = c.memoryEvents()
		return nil
	})
	return out, err
}

// withContainer decodes a ContainerRef and runs fn on the container.
func (a *Agent) withContainer(req *Request, fn func(*container) error) error {
	var m agentproto.ContainerRef
	if err := req.Decode(&m); err != nil {
		return err
	}
	c, err := a.lookup(m.Container)
	if err != nil {
		return err
	}
	if err := fn(c); err != nil {
		return fmt.Errorf("%s container %q: %w", req.Frame.Type, c.id, err)
	}
	return nil
}

// updateContainer changes a running container's resources. Like `runc update`, only the
// resource groups the host sets change; devices never do (they are not an update).
func (a *Agent) updateContainer(_ context.Context, req *Request) (any, error) {
	var m agentproto.UpdateContainer
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	if m.Resources == nil {
		return nil, errorf(agentproto.KindInvalid, "UPDATECONTAINER %q without resources", m.Container)
	}
	c, err := a.lookup(m.Container)
	if err != nil {
		return nil, err
	}
	if err := c.converted(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Shallow copies: c.spec changes only once the cgroup took the new resources, and
	// mergeResources makes a new set, leaving the current one as it is.
	spec, linux := *c.spec, *c.spec.Linux
	linux.Resources = mergeResources(linux.Resources, m.Resources)
	spec.Linux = &linux
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: c.id, Spec: &spec}, nil)
	if err != nil {
		return nil, withKind(agentproto.KindInvalid, fmt.Errorf("update container %q: %w", c.id, err))
	}
	cfg := c.lc.Config()
	cgroup := *cfg.Cgroups
	res := cg.Resources
	res.Devices = cfg.Cgroups.Resources.Devices
	res.SkipDevices = cfg.Cgroups.Resources.SkipDevices
	cgroup.Resources = res
	cfg.Cgroups = &cgroup
	if err := c.lc.Set(cfg); err != nil {
		return nil, fmt.Errorf("update container %q: %w", c.id, err)
	}
	c.spec = &spec
	return nil, nil
}

// memoryEvents reads the container's memory.events (cgroup v2): its OOM and OOM-kill
// counts among others. Nil when the cgroup cannot be read.
func (c *container) memoryEvents() map[string]uint64 {
	st, err := c.lc.State()
	if err != nil {
		return nil
	}
	dir := st.CgroupPaths[""]
	if dir == "" {
		return nil
	}
	b, err := os.ReadFile(dir + "/memory.events")
	if err != nil {
		return nil
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// vmDevices lists the device nodes of the VM's /dev (devtmpfs), as a privileged runc
// container gets the host's: what the kernel of the container's machine has.
func vmDevices() ([]specs.LinuxDevice, error) {
	found, err := devices.HostDevices()
	if err != nil {
		return nil, err
	}
	out := make([]specs.LinuxDevice, 0, len(found))
	for _, d := range found {
		mode, uid, gid := d.FileMode, d.Uid, d.Gid
		out = append(out, specs.LinuxDevice{
			Path: d.Path, Type: string(d.Type), Major: d.Major, Minor: d.Minor,
			FileMode: &mode, UID: &uid, GID: &gid,
		})
	}
	return out, nil
}
