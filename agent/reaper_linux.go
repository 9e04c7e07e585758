package agent

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zombieChildren lists this process's children that are zombies: each pid of /proc asked
// with waitid(P_PID, WNOWAIT), which answers ECHILD for a process that is not our child. A
// guest runs a few dozen processes, so a scan per SIGCHLD is cheap, and unlike
// waitid(P_ALL, WNOWAIT), which only ever shows the first zombie, it sees past a zombie whose
// status belongs to someone else. (Reading each /proc/<pid>/stat instead runs the kernel's
// do_task_stat, ~115 blocks a cold guest translates at its first container's exit.)
func zombieChildren() ([]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	var out []int
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		if zombie, _ := childZombie(pid); zombie {
			out = append(out, pid)
		}
	}
	return out, nil
}

// childZombie tells whether pid is a zombie child of this process, without reaping it;
// ECHILD when it is not a child (any more).
func childZombie(pid int) (bool, error) {
	info, err := peekExitedChild(unix.P_PID, pid, unix.WNOHANG)
	// WNOHANG with nothing to report leaves si_pid zero (waitid(2)).
	return err == nil && info.Pid != 0, err
}

// childExited tells whether pid, a child of this process, exited: a zombie, or no longer a
// child (reaped).
func childExited(pid int) bool {
	zombie, err := childZombie(pid)
	return zombie || err != nil
}

// parseStat extracts state and ppid from /proc/<pid>/stat: "pid (comm) S ppid ...". comm
// may contain spaces and parentheses, so parsing starts after the last ')'.
func parseStat(b []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, false
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], ppid, true
}

// anyZombieChild returns the pid of a zombie child without reaping it, or 0 when there is
// none, also when there are no children at all.
func anyZombieChild() (int, error) {
	info, err := peekExitedChild(unix.P_ALL, 0, unix.WNOHANG)
	switch {
	case err == unix.ECHILD:
		return 0, nil
	case err != nil:
		return 0, err
	}
	// WNOHANG with nothing to report leaves si_pid zero (waitid(2)).
	return int(info.Pid), nil
}

// peekExitedChild waits (waitid with WEXITED, and options such as WNOHANG) for an exited
// child that idtype and id select and describes it without reaping it (WNOWAIT): it stays
// a zombie until someone waits for it again.
func peekExitedChild(idtype, id, options int) (childSiginfo, error) {
	return waitExitedChild(idtype, id, unix.WNOWAIT|options)
}

// waitExitedChild waits (waitid with WEXITED and options, WNOWAIT to leave it a zombie) for
// an exited child that idtype and id select, of any kind (WALL), and describes it; a signal
// that interrupts the wait does not end it.
func waitExitedChild(idtype, id, options int) (childSiginfo, error) {
	for {
		var info childSiginfo
		err := unix.Waitid(idtype, id, (*unix.Siginfo)(unsafe.Pointer(&info)), unix.WEXITED|unix.WALL|options, nil)
		if err != unix.EINTR {
			return info, err
		}
	}
}

// childSiginfo is the kernel's siginfo_t as waitid fills it for a child on 64-bit Linux
// (unix.Siginfo leaves the union opaque): si_signo, si_errno, si_code, padding, then
// _sigchld's si_pid, si_uid, si_status.
type childSiginfo struct {
	Signo, Errno, Code, _ int32
	Pid                   int32
	UID                   uint32
	Status                int32
	_                     [100]byte
}

// waitStatus is the wait status (as wait4 returns it) of the exited child info describes:
// its exit status for CLD_EXITED, its signal for CLD_KILLED, and the core flag with it for
// CLD_DUMPED.
func (i *childSiginfo) waitStatus() syscall.WaitStatus {
	const cldExited, cldDumped = 1, 3 // si_code of SIGCHLD (CLD_KILLED is 2)
	switch i.Code {
	case cldExited:
		return syscall.WaitStatus(i.Status&0xff) << 8
	case cldDumped:
		return syscall.WaitStatus(i.Status&0x7f) | 0x80
	}
	return syscall.WaitStatus(i.Status & 0x7f)
}

// reapPid collects one specific zombie.
func reapPid(pid int) error {
	var ws unix.WaitStatus
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if got != pid {
			return fmt.Errorf("pid %d not reapable yet", pid)
		}
		return nil
	}
}
