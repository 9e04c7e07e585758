package state

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Self returns the calling process.
func Self() Process {
	p, _ := ProcessOf(os.Getpid())
	return p
}

// ProcessOf identifies a live pid with its start time.
func ProcessOf(pid int) (Process, error) {
	st, err := startTime(pid)
	if err != nil {
		return Process{}, err
	}
	return Process{Pid: pid, StartTime: st}, nil
}

// Alive reports whether the process still runs (and is not a zombie), and is the same process
// that was recorded rather than a later one that reused the pid.
func (p Process) Alive() bool {
	if p.Pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
	if err != nil {
		return false
	}
	fields, ok := statFields(b)
	if !ok || fields[0] == "Z" || fields[0] == "X" {
		return false
	}
	st, err := strconv.ParseUint(fields[19], 10, 64)
	return err == nil && (p.StartTime == 0 || st == p.StartTime)
}

// ParentOf is the pid of pid's parent.
func ParentOf(pid int) (int, error) {
	fields, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(fields[1])
}

// CPUTime is the CPU time process pid has used so far, user and system, all its threads
// (in /proc's clock ticks: 10 ms).
func CPUTime(pid int) (time.Duration, error) {
	fields, err := readStat(pid)
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

func startTime(pid int) (uint64, error) {
	fields, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// readStat reads /proc/<pid>/stat and returns its fields after the command name (statFields).
func readStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	fields, ok := statFields(b)
	if !ok {
		return nil, fmt.Errorf("process %d: unparsable /proc stat", pid)
	}
	return fields, nil
}

// statFields returns the fields of /proc/<pid>/stat after the command name, which may itself
// contain spaces and parentheses: fields[0] is the state (field 3), fields[19] the start time
// (field 22).
func statFields(b []byte) ([]string, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return nil, false
	}
	f := strings.Fields(string(b[i+2:]))
	return f, len(f) >= 20
}
