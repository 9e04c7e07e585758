// Package procstat reads a process's /proc/<pid>/stat: its state, parent, start time and CPU
// time. It imports nothing of runv's, so that small processes (the holder of a pooled VM)
// can watch processes without the state package's record types and what they pull in.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Fields reads /proc/<pid>/stat and returns its fields after the command name, which may
// itself contain spaces and parentheses: fields[0] is the state (field 3), fields[1] the
// parent (field 4), fields[11:13] the user and system time (fields 14, 15), fields[19] the
// start time (field 22).
func Fields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	fields, ok := Parse(b)
	if !ok {
		return nil, fmt.Errorf("process %d: unparsable /proc stat", pid)
	}
	return fields, nil
}

// Parse splits the content of a /proc/<pid>/stat file as Fields does; false if it is not one.
func Parse(b []byte) ([]string, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return nil, false
	}
	f := strings.Fields(string(b[i+2:]))
	return f, len(f) >= 20
}

// ParentOf is the pid of pid's parent.
func ParentOf(pid int) (int, error) {
	fields, err := Fields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(fields[1])
}

// StartTime is the process's start in clock ticks since boot: with the pid, it tells the
// process from a later one that reused the pid.
func StartTime(pid int) (uint64, error) {
	fields, err := Fields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// CPUTime is the CPU time process pid has used so far, user and system, all its threads
// (in /proc's clock ticks: 10 ms).
func CPUTime(pid int) (time.Duration, error) {
	fields, err := Fields(pid)
	if err != nil {
		return 0, err
	}
	var ticks uint64
	for _, f := range fields[11:13] { // utime, stime (fields 14, 15)
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("process %d: /proc stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every Linux ABI.
const clockTicks = 100
