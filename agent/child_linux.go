package agent

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// childProcess is a process the agent started itself (the exec helper) or one the helper
// forked with the agent as its parent (a container's init, an exec'd process), held by a
// pidfd: it is signalled and waited for through that descriptor, so a recycled pid is
// never hit.
//
// Why not os.Process: Go's os package runs a one-time probe of the kernel's pidfd support
// at its first os.StartProcess or os.FindProcess (pidfd_open, waitid, pidfd_send_signal,
// and a clone with CLONE_PIDFD whose exit it waits for), and in a direct guest that is the
// first container's create: with os.StartProcess's own code, ~250 blocks a cold guest
// translates between NEWCONTAINER and the exit report (docs/performance.md, "The agent's Go
// runtime paths, stop 21"). The guest's kernel is runv's own, with pidfds: clone3 hands
// the descriptor over with the process (syscall.SysProcAttr.PidFD), pidfd_open takes one
// for a pid the helper reports.
type childProcess struct {
	Pid int

	mu    sync.Mutex // held while the descriptor is used for a signal, and to close it
	pidfd int        // -1 once the process was reaped
}

// startChild starts path with argv, an empty environment and files as its descriptors 0,
// 1, ... (nil: closed), with sys's attributes; its errors read as os.StartProcess's.
func startChild(path string, argv []string, files []*os.File, sys *syscall.SysProcAttr) (*childProcess, error) {
	fds := make([]uintptr, len(files))
	for i, f := range files {
		fds[i] = ^uintptr(0)
		if f != nil {
			fds[i] = f.Fd() // blocking in the child, as os.StartProcess hands them over
		}
	}
	attr := *sys
	pidfd := -1
	attr.PidFD = &pidfd
	pid, _, err := syscall.StartProcess(path, argv, &syscall.ProcAttr{Env: []string{}, Files: fds, Sys: &attr})
	runtime.KeepAlive(files)
	if err != nil {
		return nil, &os.PathError{Op: "fork/exec", Path: path, Err: err}
	}
	if pidfd < 0 {
		// A kernel without CLONE_PIDFD started it all the same: hold it by pidfd_open.
		if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
			_ = unix.Kill(pid, unix.SIGKILL)
			_, _ = unix.Wait4(pid, nil, 0, nil)
			return nil, fmt.Errorf("%s started as pid %d, killed: no pidfd for it: %w", path, pid, os.NewSyscallError("pidfd_open", err))
		}
	}
	return &childProcess{Pid: pid, pidfd: pidfd}, nil
}

// findChild holds pid, a child of the agent that the helper forked, by a pidfd.
func findChild(pid int) (*childProcess, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, os.NewSyscallError("pidfd_open", err)
	}
	return &childProcess{Pid: pid, pidfd: fd}, nil
}

// Signal sends sig; os.ErrProcessDone once the process was reaped or is gone.
func (p *childProcess) Signal(sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return errors.New("os: unsupported signal type")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return os.ErrProcessDone
	}
	if err := unix.PidfdSendSignal(p.pidfd, s, nil, 0); err != nil {
		if err == unix.ESRCH {
			return os.ErrProcessDone
		}
		return os.NewSyscallError("pidfd_send_signal", err)
	}
	return nil
}

// Kill sends SIGKILL.
func (p *childProcess) Kill() error {
	return p.Signal(syscall.SIGKILL)
}

// killAndReap kills a process given up on and reaps it: what it reports no longer matters.
func (p *childProcess) killAndReap() {
	_ = p.Kill()
	_, _ = p.wait()
}

// wait waits until the process exited, reaps it and lets its descriptor go: its wait
// status. Call it once.
func (p *childProcess) wait() (syscall.WaitStatus, error) {
	p.mu.Lock()
	fd := p.pidfd
	p.mu.Unlock()
	if fd < 0 {
		return 0, errors.New("wait: the process was already waited for")
	}
	info, err := waitExitedChild(unix.P_PIDFD, fd, 0)
	p.mu.Lock()
	unix.Close(p.pidfd)
	p.pidfd = -1
	p.mu.Unlock()
	if err != nil {
		return 0, os.NewSyscallError("waitid", err)
	}
	return info.waitStatus(), nil
}

// waitStatusText words a wait status as os.ProcessState does ("exit status 1",
// "signal: killed").
func waitStatusText(ws syscall.WaitStatus) string {
	var s string
	switch {
	case ws.Exited():
		s = "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		s = "signal: " + ws.Signal().String()
	default:
		s = fmt.Sprintf("wait status %#x", uint32(ws))
	}
	if ws.CoreDump() {
		s += " (core dumped)"
	}
	return s
}
