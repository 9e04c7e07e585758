package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// The agent's probe mode: booted with ProbeParam, /init prints ProbeMarker on the serial
// console and powers off at once.
const (
	ProbeParam  = "runv.probe=1"
	ProbeMarker = "RUNV-PROBE-OK"
)

// probe boots cfg's kernel and initrd under accel in probe mode and reports whether the
// guest reached userspace (printed ProbeMarker) within timeout; reason says why not. err
// is only set when ctx ended or nothing could be started: no verdict then. The probe VM
// is always killed and its directory removed.
func (l *Launcher) probe(ctx context.Context, cfg hypervisor.Config, accel string, timeout time.Duration) (ok bool, reason string, err error) {
	// Next to the verdict cache (/run by default: short socket paths, cleared on reboot),
	// else in the temp dir.
	dir, err := os.MkdirTemp(filepath.Dir(l.accelCachePath()), "runv-probe-")
	if err != nil {
		if dir, err = os.MkdirTemp("", "runv-probe-"); err != nil {
			return false, "", err
		}
	}
	defer os.RemoveAll(dir)

	pc := cfg
	pc.ID = "accel-probe"
	pc.Dir, pc.ShareDir = dir, dir
	pc.Machine = hypervisor.MachineMicroVM
	pc.CPUs, pc.MemoryMiB, pc.MaxCPUs, pc.MaxMemoryMiB = 1, DefaultMemoryMiB, 0, 0
	pc.KernelParams = []string{ProbeParam}
	s := spec{cfg: pc, accel: accel, serial: "stdio"}
	if accel == hypervisor.AccelTCG {
		if s.tscKHz, err = l.tscKHz(); err != nil {
			return false, "", err
		}
	}

	// The console comes through a pipe so that the marker is an event, not a file to poll.
	r, w, err := os.Pipe()
	if err != nil {
		return false, "", err
	}
	logPath := pathsIn(dir).QEMULog
	logf, err := os.Create(logPath)
	if err != nil {
		r.Close()
		w.Close()
		return false, "", err
	}
	p, err := startProcess(startOpts{path: pc.QEMU, args: buildArgs(s), stdout: w, stderr: logf})
	w.Close()
	logf.Close()
	if err != nil {
		r.Close()
		return false, "", fmt.Errorf("start %s: %w", pc.QEMU, err)
	}
	defer func() {
		t := time.Now()
		p.killAndWait()
		logging.G(ctx).Debug("probe VM reaped", "accel", accel, "duration", time.Since(t))
	}()

	found := make(chan struct{})
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		defer r.Close()
		sc := bufio.NewScanner(r)
		seen := false
		for sc.Scan() {
			if !seen && strings.Contains(sc.Text(), ProbeMarker) {
				seen = true
				close(found)
			}
		}
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-found:
		return true, "guest booted", nil
	case <-p.done:
		<-eof // the marker may still sit in the pipe
		select {
		case <-found:
			return true, "guest booted", nil
		default:
		}
		return false, fmt.Sprintf("probe VM exited (%v) without reaching userspace: %s", p.waitErr, tail(logPath, 4)), nil
	case <-timer.C:
		logging.G(ctx).Debug("probe timed out", "accel", accel, "stderr", tail(logPath, 4))
		reason = fmt.Sprintf("no %s from the probe VM within %v", ProbeMarker, timeout)
		// QEMU says why on its first stderr line, e.g. "KVM internal error. Suberror: 1".
		if first := firstLine(logPath); first != "" {
			reason += " (qemu: " + first + ")"
		}
		return false, reason, nil
	case <-ctx.Done():
		return false, "", ctx.Err()
	}
}

// firstLine returns the first non-empty line of a small log file.
func firstLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			return l
		}
	}
	return ""
}
