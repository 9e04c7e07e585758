package holder

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// proc is a process watched for its exit: a child (the factory daemon's holders, reaped by
// us) or any process (a pod daemon's handed-out holder), through a pidfd either way so that
// signals never reach a recycled pid.
type proc struct {
	pid   int
	pidfd int
	file  *os.File // watchProcess: the pidfd on Go's poller
	done  chan struct{}
	// released is closed when release ended a watchProcess watch (done never closes then).
	released chan struct{}

	mu     sync.Mutex
	exited bool
}

// startChild starts cmd in its own process group and reaps it in the background.
//
// No Pdeathsig: a holder has to outlive us once its VM is handed out, and a Go process
// cannot reliably clear its Pdeathsig (it is set on the thread group leader only, and
// prctl acts on whichever thread the goroutine runs on). A holder watches its parent
// through a pidfd instead, and kills its VM when the parent dies while the VM is pooled.
func startChild(cmd *exec.Cmd) (*proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Own group: a ^C meant for the factory daemon does not reach the holders (the pooled
	// ones follow it anyway; the handed-out ones must not).
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{pid: cmd.Process.Pid, pidfd: -1, done: make(chan struct{})}
	if fd, err := unix.PidfdOpen(p.pid, 0); err == nil {
		p.pidfd = fd
	}
	go func() {
		cmd.Wait()
		p.mu.Lock()
		p.exited = true
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// watchProcess watches a process that is not our child. The pidfd is opened now: the
// caller must make sure the pid is still the process it means afterwards (by talking to
// it), since before that the pid could in theory have been recycled. The wait runs on Go's
// poller (a pidfd polls readable once the process exited), so a watch holds no thread, and
// release ends it.
func watchProcess(pid int) (*proc, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch process %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("watch process %d: %w", pid, err)
	}
	p := &proc{pid: pid, pidfd: fd, file: f, done: make(chan struct{}), released: make(chan struct{})}
	go func() {
		err := rc.Read(func(fd uintptr) bool {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(fds, 0)
			return n > 0 // false: not exited yet, wait for the poller
		})
		if err != nil {
			// Released: the watch ended, the process did not.
			close(p.released)
			return
		}
		p.mu.Lock()
		p.exited = true
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// release ends a watch started by watchProcess without waiting for the process.
func (p *proc) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.file != nil {
		p.file.Close()
		p.file = nil
		p.pidfd = -1
	}
}

// kill sends SIGKILL to the process (through its pidfd) unless it is known to be gone.
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited || p.pidfd < 0 {
		return
	}
	unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// closeFD releases the pidfd of a child once it is gone.
func (p *proc) closeFD() {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd >= 0 && p.file == nil {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// devNull opens /dev/null for a child's stdin.
func devNull() (*os.File, error) { return os.Open(os.DevNull) }
