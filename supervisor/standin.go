package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/logging"
)

// A container process has a stand-in on the host (its `runv shim`, or a foreground runv):
// the pid clients see, signal and wait for. Clients kill a process by SIGKILLing that pid
// (containerd's runc shim on an exec timeout, `kill -9`, the host's OOM killer), and a
// SIGKILL cannot be forwarded. So the daemon watches every stand-in through a pidfd and
// kills the process in the VM when its stand-in dies first: the death of the stand-in is
// the death of the process, as it is with runc. A pidfd is not fooled by pid reuse and
// needs no cooperation from the dying process.

// standInKillTimeout bounds the kill sent to the VM after a stand-in died.
const standInKillTimeout = 30 * time.Second

// WatchStandIn takes files, which must be one pidfd, and kills process proc of container id
// in the VM if the process behind the pidfd exits while proc still runs.
func (s *Supervisor) WatchStandIn(ctx context.Context, id, proc string, files []*os.File) error {
	if len(files) != 1 {
		closeAll(files)
		return fmt.Errorf("stand-in of process %q of container %q: want one pidfd, got %d descriptors: %w", procID(proc), id, len(files), errdefs.ErrInvalidArgument)
	}
	pidfd, pid, err := pollablePidfd(files[0])
	if err != nil {
		return fmt.Errorf("stand-in of process %q of container %q: %w", procID(proc), id, err)
	}
	c, err := s.lookup(id)
	if err != nil {
		pidfd.Close()
		return err
	}
	proc = procID(proc)
	c.mu.Lock()
	p, ok := c.processes[proc]
	c.mu.Unlock()
	if !ok {
		pidfd.Close()
		return fmt.Errorf("container %q has no process %q: %w", id, proc, errdefs.ErrNotFound)
	}
	ctx = logging.With(context.WithoutCancel(ctx), "pod", s.cfg.PodID, "container", id, "process", proc, "stand_in_pid", pid)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		if err := waitPidfd(pidfd); err != nil {
			return // closed below: the process ended first
		}
	}()
	go func() {
		select {
		case <-p.done:
			pidfd.Close() // ends the waiter
			return
		case <-s.closing:
			pidfd.Close()
			return
		case <-exited:
			pidfd.Close()
		}
		select {
		case <-p.done:
			return // the process ended first and its stand-in followed it
		default:
		}
		logging.G(ctx).Warn("stand-in died while its process runs: killing the process in the VM")
		kctx, cancel := context.WithTimeout(ctx, standInKillTimeout)
		defer cancel()
		if err := s.Signal(kctx, id, proc, int(syscall.SIGKILL), false); err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) && !errors.Is(err, errdefs.ErrNotFound) {
			logging.G(ctx).Error("kill the process of a dead stand-in", "error", err)
		}
	}()
	return nil
}

// pollablePidfd checks that f is a pidfd and returns it registered with Go's poller (so a
// wait on it parks a goroutine, not a thread), with the pid it refers to. f is consumed.
func pollablePidfd(f *os.File) (*os.File, int, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	dup, pid := -1, 0
	var cerr error
	err = rc.Control(func(fd uintptr) {
		link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd)))
		if err != nil || link != "anon_inode:[pidfd]" {
			cerr = fmt.Errorf("the descriptor passed is not a pidfd (%s): %w", link, errdefs.ErrInvalidArgument)
			return
		}
		if pid, cerr = pidfdPid(int(fd)); cerr != nil {
			return
		}
		if dup, cerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); cerr != nil {
			return
		}
		cerr = unix.SetNonblock(dup, true)
	})
	if err = errors.Join(err, cerr); err != nil {
		if dup >= 0 {
			unix.Close(dup)
		}
		return nil, 0, err
	}
	// Non-blocking: os.NewFile registers it with the poller.
	return os.NewFile(uintptr(dup), "pidfd:"+strconv.Itoa(pid)), pid, nil
}

// pidfdPid reads the pid a pidfd refers to from its fdinfo (-1: it exited already).
func pidfdPid(fd int) (int, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0, fmt.Errorf("read pidfd info: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("pidfd info names no pid: %w", errdefs.ErrInvalidArgument)
}

// waitPidfd blocks until the process behind pidfd exits (nil), or pidfd is closed (error).
func waitPidfd(pidfd *os.File) error {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Read(func(fd uintptr) bool {
		// A pidfd polls readable once its process exited.
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return err == nil && n > 0
	})
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
