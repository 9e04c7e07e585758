package state

import (
	"os"
	"strconv"

	"github.com/runv-project/runv/internal/procstat"
)

// Self returns the calling process.
func Self() Process {
	p, _ := ProcessOf(os.Getpid())
	return p
}

// ProcessOf identifies a live pid with its start time.
func ProcessOf(pid int) (Process, error) {
	st, err := procstat.StartTime(pid)
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
	fields, err := procstat.Fields(p.Pid)
	if err != nil || fields[0] == "Z" || fields[0] == "X" {
		return false
	}
	st, err := strconv.ParseUint(fields[19], 10, 64)
	return err == nil && (p.StartTime == 0 || st == p.StartTime)
}
