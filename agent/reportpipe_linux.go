package agent

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// reportReader reads a helper's report pipe until a deadline: before each read, poll(2)
// waits for the pipe in a blocking system call, with the time left as its timeout. Past the
// deadline a read fails as a read past the file's read deadline does (os.ErrDeadlineExceeded,
// "read |0: i/o timeout"), and the pipe is left as it was.
//
// Why not the file's read deadline (SetReadDeadline): that arms one of the Go runtime's
// timers, and in a direct guest the first container's create is where the agent first uses
// that machinery (the timer heap's insertion, its checks in the scheduler, the poller's
// deadline): ~230 blocks a cold guest translates between NEWCONTAINER and the exit report
// (docs/performance.md, "The agent's Go runtime paths, stop 21"). The bound stays: a helper
// that hangs is given up on after execHelperWait.
type reportReader struct {
	f        *os.File
	deadline time.Time
}

// newReportReader reads f until wait from now.
func newReportReader(f *os.File, wait time.Duration) *reportReader {
	return &reportReader{f: f, deadline: time.Now().Add(wait)}
}

func (r *reportReader) Read(p []byte) (int, error) {
	ready, err := r.waitReadable()
	if err != nil {
		return 0, err
	}
	if !ready {
		return 0, &os.PathError{Op: "read", Path: r.f.Name(), Err: os.ErrDeadlineExceeded}
	}
	// Readable (data, or the write end closed): the read returns at once.
	return r.f.Read(p)
}

// waitReadable waits until the pipe is readable (true) or the deadline passed (false).
func (r *reportReader) waitReadable() (bool, error) {
	rc, err := r.f.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("report pipe %s: %w", r.f.Name(), err)
	}
	var (
		ready bool
		perr  error
	)
	// Control leaves the descriptor non-blocking and in the poller (Fd would not).
	if err := rc.Control(func(fd uintptr) {
		for {
			left := time.Until(r.deadline)
			if left <= 0 {
				return
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, int((left+time.Millisecond-1)/time.Millisecond))
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				perr = fmt.Errorf("poll the report pipe %s: %w", r.f.Name(), err)
			case n > 0:
				ready = true
			default:
				continue // timed out: the loop's check ends it
			}
			return
		}
	}); err != nil {
		return false, fmt.Errorf("report pipe %s: %w", r.f.Name(), err)
	}
	return ready, perr
}
