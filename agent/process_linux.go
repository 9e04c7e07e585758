package agent

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// procHandle is what the agent does with a started process: libcontainer's Process
// (libcontainerProcess), or the childProcess of one the exec helper started.
type procHandle interface {
	Signal(os.Signal) error
	// wait waits until the process exited and reaps it: its wait status, or an error when
	// that is lost.
	wait() (syscall.WaitStatus, error)
}

// libcontainerProcess is a process libcontainer started, as a procHandle.
type libcontainerProcess struct{ *libcontainer.Process }

func (p libcontainerProcess) wait() (syscall.WaitStatus, error) {
	// An exit status other than 0 comes with an *exec.ExitError beside a valid state.
	st, err := p.Wait()
	if st == nil {
		return 0, err
	}
	ws, _ := st.Sys().(syscall.WaitStatus)
	return ws, nil
}

// process is a container's init or an exec'd process.
type process struct {
	id       string
	ctr      *container
	log      *logger
	lp       *libcontainer.Process
	handle   procHandle // nil while an exec is still being started
	pid      int
	terminal bool
	io       *procIO
	// lateRlimits are set by the agent once the program is exec'd (see lateRlimitTypes).
	lateRlimits []configs.Rlimit

	// done is closed when the process is gone and its output was delivered, just before
	// PROCESSEXIT is sent (the host may act on the event at once, e.g. REMOVECONTAINER).
	done chan struct{}
	// reported is closed once PROCESSEXIT was written.
	reported chan struct{}

	// mountNS holds a container init's mount namespace open until its exit is reported
	// (pinMountNS); nil for other processes.
	mountNS *os.File
	// program holds the file a container's init exec'd (an O_PATH descriptor) until its
	// exit is reported (pinProgram); nil for other processes.
	program *os.File

	mu   sync.Mutex
	exit agentproto.ProcessExit
	// execAt is when the process was seen to exec its program (zero before).
	execAt time.Time
}

// pinMountNS holds the mount namespace of a container's init open, so that it outlives
// the init until its exit was reported (releasePins).
//
// Why: a process's exit tears its namespaces down before its parent learns of the exit.
// The last process of a container's mount namespace unmounts the container's whole tree
// on its way out (its proc, /dev, devpts, mqueue and sysfs, the rootfs's bind), and only
// then does the agent see it exit and report it. Under TCG, in a cold guest, that is ~300
// blocks of the kernel's code translated for the first time, between the container's
// program ending and the host hearing of it. With the namespace held, the same teardown
// runs after PROCESSEXIT is out: a pod that ends with the container (a foreground run)
// never waits for it, and the guest's mounts are the same a moment later.
func (p *process) pinMountNS() {
	f, err := os.Open("/proc/" + strconv.Itoa(p.pid) + "/ns/mnt")
	if err != nil {
		p.log.Debugf("mount namespace not held: %v", err)
		return
	}
	p.mountNS = f
}

// pinProgram holds the file the container's init exec'd, once it did, until its exit was
// reported (releasePins).
//
// Why: the container's rootfs is on the 9p share, mounted cache=mmap, whose dentries go at
// their last use; when the program exits, the kernel drops its binary's dentry and inode and
// truncates the page cache its exec read (~250 blocks of the kernel's code translated for the
// first time in a cold guest: xas_store, delete_from_page_cache_batch, the pages' freeing),
// between the program's end and the agent learning of it. Held, that runs when the agent
// lets it go, after PROCESSEXIT is out, as the mount namespace's teardown (pinMountNS). An
// init that exited before this opened its exe is not held: nothing changes for it.
func (p *process) pinProgram() {
	// O_PATH: nothing is read, and os.OpenFile would offer the descriptor to the poller.
	name := "/proc/" + strconv.Itoa(p.pid) + "/exe"
	fd, err := unix.Open(name, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		p.log.Debugf("program not held: %v", err)
		return
	}
	p.program = os.NewFile(uintptr(fd), name)
}

// releasePins lets the init's mount namespace and program go (their teardown runs in this
// thread).
func (p *process) releasePins() {
	if p.mountNS != nil {
		p.mountNS.Close()
		p.mountNS = nil
	}
	if p.program != nil {
		p.program.Close()
		p.program = nil
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startProcess creates the process: the container's init (created, waiting for
// STARTCONTAINER) or an extra process in it (hint: where the host found its program, ""
// for none; ExecProcess.ProgramHint). On success the process's streams are open but
// nothing is copied yet: the caller ACKs, then calls runProcess.
func (a *Agent) startProcess(c *container, id string, spec *specs.Process, st agentproto.Stdio, rows, cols uint16, init bool, hint string, tr *stepTrace) (*process, error) {
	var (
		lp  *libcontainer.Process
		cp  *convert.Process // the conversion's terms, for an exec
		err error
	)
	if init && c.unconverted != nil {
		lp = convertedInitProcess(spec)
	} else if lp, cp, err = newProcess(spec, init); err != nil {
		return nil, err
	}
	if rows != 0 && cols != 0 {
		lp.ConsoleHeight, lp.ConsoleWidth = rows, cols
	}
	fast := false
	if !init {
		if fast, err = a.useExecHelper(c, cp); err != nil {
			return nil, err
		}
	}
	_, engineInit := c.lc.(*engineContainer)
	engineInit = engineInit && init
	// Without rlimits of its own the process gets the container's (libcontainer's rule).
	// The helper sets them all itself, before the exec.
	late := c.lateRlimits
	if fast || engineInit {
		late = nil
	} else if len(lp.Rlimits) > 0 {
		lp.Rlimits, late = convert.SplitLateRlimits(lp.Rlimits)
	}
	log := c.log.with("proc", id)
	pio, err := newProcIO(a.streams(), st, spec.Terminal, lp, log)
	if err != nil {
		return nil, err
	}

	tr.mark("stdio set up")
	done := a.reaper.beginStart()
	var handle procHandle
	pid := 0
	switch {
	case fast:
		var proc *childProcess
		if proc, err = a.fastExec(c, lp, cp, hint, tr); err == nil {
			handle, pid = proc, proc.Pid
		}
	case init:
		err = c.lc.Start(lp)
	default:
		err = c.lc.Run(lp)
	}
	if err == nil && !fast {
		handle, pid = initHandle(c.lc, lp)
	}
	done(pid)
	if fast {
		tr.mark("helper: program exec'd")
	} else {
		tr.mark("libcontainer start returned")
	}
	if err != nil {
		pio.abort()
		if _, cerr, ok := classifyStartError(err); ok {
			return nil, cerr
		}
		return nil, fmt.Errorf("start process %q in container %q: %w", id, c.id, err)
	}

	p := &process{
		id: id, ctr: c, log: log, lp: lp, handle: handle, pid: pid, terminal: spec.Terminal, io: pio,
		lateRlimits: late,
		done:        make(chan struct{}), reported: make(chan struct{}),
	}
	if err := pio.started(); err != nil {
		_ = handle.Signal(sigKill)
		_, _ = handle.wait()
		a.reaper.untrack(pid)
		pio.abort()
		return nil, fmt.Errorf("start process %q in container %q: %w", id, c.id, err)
	}
	tr.mark("stdio started")
	if init {
		p.pinMountNS()
	} else {
		p.execed(fast)
		tr.mark("program exec'd")
	}
	log.Debugf("started, pid %d", pid)
	return p, nil
}

// runProcess copies the process's stdio and reports its exit, in this order: the process is
// gone (Wait), all its output and the output streams' EOF frames were sent, then
// PROCESSEXIT. Call it after the command's ACK.
func (a *Agent) runProcess(p *process) {
	p.io.start()
	go func() {
		// The status without reaping, when the agent's own waitid can take it (a process it
		// started itself, a childProcess, not libcontainer's): the zombie's release (its /proc
		// entries flushed, its pid freed) then runs after PROCESSEXIT. The reaper is told
		// first: the SIGCHLD may reach it before this wakes.
		var exit agentproto.ProcessExit
		reapLater := false
		if _, own := p.handle.(*childProcess); own {
			a.reaper.reapsAfterReport(p.pid)
			exit, reapLater = p.exitUnreaped()
		}
		if !reapLater {
			ws, werr := p.handle.wait()
			a.reaper.untrack(p.pid)
			exit = processExit(p.ctr.id, p.id, ws, werr)
		}
		if p.id == agentproto.InitProcessID && exit.Signal == int(sigKill) {
			// The kernel's OOM killer sends SIGKILL; the container's cgroup counts it.
			exit.OOMKilled = p.ctr.memoryEvents()["oom_kill"] > 0
		}
		p.io.waitOutput()
		p.io.finish()
		p.mu.Lock()
		p.exit = exit
		p.mu.Unlock()
		close(p.done)
		a.sendExit(exit)
		close(p.reported)
		if reapLater {
			_, _ = p.handle.wait()
			a.reaper.untrack(p.pid)
		}
		if p.id == agentproto.InitProcessID {
			// Nothing can be exec'd any more: the server lets the namespaces go.
			p.ctr.stopExecServer()
		}
		// Logged once reported: under TCG the console line costs ~0.5 ms of the guest's
		// only vCPU, which the host would otherwise wait for. A clean exit only with
		// runv.debug=1, as the other success lines (startPod).
		if exit.ExitCode == 0 && exit.Error == "" {
			p.log.Debugf("exited: code 0")
		} else {
			p.log.Infof("exited: code %d%s", exit.ExitCode, errSuffix(exit.Error))
		}
		p.releasePins()
		if p.id != agentproto.InitProcessID {
			p.ctr.forget(p)
		}
	}()
}

// exitUnreaped waits until the process, a child of the agent, exited and returns its
// PROCESSEXIT, leaving it a zombie (waitid with WNOWAIT); ok false when waitid failed
// (handle.wait then tells why). The caller reaps it (handle.wait) once the exit is reported.
//
// Why: reaping releases the process, and for a container's init that flushes the /proc
// entries the agent looked up (ns/mnt, exe, stat: d_invalidate, d_walk, the dentries'
// shrinking) and runs the wait and release of the process's handle (waitid, the pidfd's close):
// ~300 blocks a cold guest translates at its first container's exit, before the host
// learns of it. The zombie holds nothing of the container (its cgroup and namespaces are
// left), and until it is reaped its pid is not reused (the reaper leaves a tracked pid
// alone).
func (p *process) exitUnreaped() (agentproto.ProcessExit, bool) {
	info, err := peekExitedChild(unix.P_PID, p.pid, 0)
	if err != nil {
		return agentproto.ProcessExit{}, false // Wait tells what is wrong
	}
	return exitOf(p.ctr.id, p.id, info.waitStatus()), true
}

func errSuffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}
