package agent

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// zombieChildren lists this process's children that are zombies, from /proc/<pid>/stat
// (state Z, ppid = us). A guest runs a few dozen processes, so a scan per SIGCHLD is cheap,
// and unlike waitid(P_ALL, WNOWAIT), which only ever shows the first zombie, it sees past
// a zombie whose status belongs to someone else.
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
	self := os.Getpid()
	var out []int
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		state, ppid, ok := parseStat(b)
		if ok && state == 'Z' && ppid == self {
			out = append(out, pid)
		}
	}
	return out, nil
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
