package qemu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// process is a running QEMU and the one goroutine that waits for it.
type process struct {
	pid  int
	done chan struct{} // closed after QEMU was reaped and onExit ran

	mu     sync.Mutex
	exited bool // QEMU has exited; it stays unreaped (a zombie) until waitErr is set

	waitErr error // cmd.Wait's result; read only after done is closed
	// cpu is the CPU time QEMU used, all its threads (user and system, from its rusage):
	// the guest's work, TCG translation included. sysCPU is the host kernel's part of it,
	// mostly page faults (minorFaults: the huge pages of TCG's translation buffer zeroed,
	// guest pages copied on write), which on a host that hands free memory back to its own
	// hypervisor varies by hundreds of ms from run to run (docs/performance.md, "Template
	// clone, stop 12"). Read only after done is closed.
	cpu, sysCPU time.Duration
	minorFaults int64
}

type startOpts struct {
	path   string
	args   []string
	stdout *os.File // nil: /dev/null
	stderr *os.File // nil: /dev/null
	// onExit runs once QEMU is reaped, before done is closed, so that whoever waits on
	// done sees its effects (sockets removed).
	onExit func(*process)
	// extraFiles are inherited as descriptors 3, 4, ...
	extraFiles []*os.File
	// awaitFiles, if set, returns descriptors inherited after extraFiles. The forking
	// thread calls it once QEMU's namespaces are ready, just before the fork, so that the
	// caller can make them meanwhile (a VM's sockets, vmsockets.go).
	awaitFiles func() ([]*os.File, error)
	// confine runs QEMU confined (confine.go); name names it there.
	confine bool
	name    string
	// newNetNS starts QEMU in a network namespace of its own, made with the VM's taps in it
	// (taps, nic.go): they wait there, invisible to the host, until they are moved into the
	// pod's namespace, and die with it.
	newNetNS bool
	taps     nicTaps
	// jail runs QEMU in a mount namespace of its own (jail.go), built over jailRoot.
	jail     *jail
	jailRoot string
}

// startProcess starts QEMU so that it dies with us (SIGKILL on our death) in its own
// process group, and reaps it in the background.
func startProcess(o startOpts) (*process, error) {
	// Not fatal: without the setting QEMU runs as it would anywhere else.
	_ = DisableHugePages()
	cmd := exec.Command(o.path, o.args...)
	if o.stdout != nil {
		cmd.Stdout = o.stdout
	}
	if o.stderr != nil {
		cmd.Stderr = o.stderr
	}
	cmd.ExtraFiles = o.extraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		// Own group: a ^C meant for us does not hit QEMU before we shut the guest down,
		// and kill() can take QEMU's whole group along.
		Setpgid: true,
	}
	conf := &confinement{cgroupFD: -1}
	if o.confine {
		var err error
		if conf, err = confine(cmd.SysProcAttr, o.name); err != nil {
			return nil, err
		}
	}
	release := func() {}
	if o.jail != nil && o.jail.share != "" {
		var err error
		if release, err = propagateShare(o.jail.share); err != nil {
			conf.exited()
			return nil, err
		}
	}

	p := &process{done: make(chan struct{})}
	started := make(chan error, 1)
	exited := make(chan struct{})
	offMainThread(func() {
		// Pdeathsig is delivered when the *thread* that forked QEMU exits, and the Go runtime
		// may end idle threads. So QEMU is forked from a locked thread that stays in this
		// goroutine until QEMU is gone. The thread is never unlocked: a goroutine that returns
		// while locked takes its thread with it, which is what we want once QEMU exited, and
		// what a thread moved into QEMU's jail (its mount namespace and root) or its network
		// namespace needs.
		if o.newNetNS {
			// Made here rather than with CLONE_NEWNET: the taps must be there before QEMU
			// opens them (nic.go, makeTaps), and QEMU inherits this thread's namespace.
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				started <- fmt.Errorf("new network namespace: %w", err)
				return
			}
			if err := o.taps.make(); err != nil {
				started <- err
				return
			}
		}
		if o.jail != nil {
			if err := o.jail.enter(o.jailRoot); err != nil {
				started <- err
				return
			}
		}
		if o.awaitFiles != nil {
			files, err := o.awaitFiles()
			if err != nil {
				started <- err
				return
			}
			cmd.ExtraFiles = slices.Concat(o.extraFiles, files)
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		// Learn of the exit without reaping, so kill() can never signal a recycled pid or
		// process group: both stay reserved while QEMU is a zombie.
		waitExitNoReap(p.pid)
		close(exited)
	})
	err := <-started
	conf.started()
	if err != nil {
		release()
		conf.exited()
		return nil, err
	}
	// The rest runs outside the forking thread, which may be in QEMU's jail: the cleanup
	// works on the host's paths.
	go func() {
		<-exited
		p.mu.Lock()
		p.exited = true
		p.mu.Unlock()
		p.waitErr = cmd.Wait()
		if st := cmd.ProcessState; st != nil {
			p.cpu, p.sysCPU = st.UserTime()+st.SystemTime(), st.SystemTime()
			if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
				p.minorFaults = ru.Minflt
			}
		}
		release()
		conf.exited()
		if o.onExit != nil {
			o.onExit(p)
		}
		close(p.done)
	}()
	return p, nil
}

// offMainThread runs f in a new goroutine locked to a thread that is not the process's
// main thread, and never unlocked. The main thread's mount namespace is what
// /proc/self/mountinfo shows the whole process (and a jail's would be wrong there), and it
// cannot exit with its goroutine.
func offMainThread(f func()) {
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			f()
			return
		}
		// While this goroutine holds the main thread, a new goroutine runs on another one.
		locked := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(locked)
			f()
		}()
		<-locked
		runtime.UnlockOSThread()
	}()
}

func waitExitNoReap(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return // exited, or ECHILD: nothing left to wait for; cmd.Wait reports it
		}
	}
}

// kill sends SIGKILL to QEMU's process group. It does not wait: done is closed once QEMU
// is reaped.
func (p *process) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.exited {
		unix.Kill(-p.pid, unix.SIGKILL)
	}
}

// killAndWait kills QEMU and returns once it is reaped.
func (p *process) killAndWait() {
	p.kill()
	<-p.done
}

// hasExited reports whether done is closed.
func (p *process) hasExited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last lines (at most n) of a log file on one line, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 4096
	if st, err := f.Stat(); err == nil && st.Size() > window {
		f.Seek(st.Size()-window, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, window))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
