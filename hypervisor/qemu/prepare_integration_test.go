//go:build integration

package qemu

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/runv-project/runv/internal/leakcheck"
)

// qemuTap describes, as `ip -details` shows it, the tap of NIC slot 0 in the network
// namespace of the QEMU with pid.
func qemuTap(t *testing.T, pid int) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(pid)+"/ns/net", "ip", "-details", "link", "show", tapName(0)).CombinedOutput()
	if err != nil {
		t.Fatalf("%s in QEMU's network namespace: %v: %s", tapName(0), err, out)
	}
	return string(out)
}

// A VM launched after PrepareBoot of its size is forked from the prepared thread, with the
// taps it made; one of another size gets taps of its own size, and the prepared thread goes.
func TestPreparedBoot(t *testing.T) {
	for _, c := range []struct {
		name               string
		preparedFor, cpus  int
		multiQueue, reuses bool
	}{
		{"same size", 2, 2, true, true},
		{"other size", 2, 1, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := vmConfig(t)
			cfg.CPUs = c.cpus
			l := &Launcher{}
			l.PrepareBoot(c.preparedFor)
			prepared := l.prepared.thread
			v := mustLaunch(t, l, cfg)
			if left, _ := l.takePrepared(); left != nil {
				t.Error("the prepared thread is still there after the launch")
			}
			if reused := threadForked(prepared); reused != c.reuses {
				t.Errorf("QEMU forked from the prepared thread: %v, want %v", reused, c.reuses)
			}
			if tap := qemuTap(t, v.Pid()); strings.Contains(tap, "multi_queue") != c.multiQueue {
				t.Errorf("QEMU of %d vCPUs has %s: multi_queue %v, want %v:\n%s", c.cpus, tapName(0), !c.multiQueue, c.multiQueue, tap)
			}
		})
	}
}

// threadForked reports whether t was handed a QEMU start (fork), not abandoned.
func threadForked(t *forkingThread) bool {
	select {
	case <-t.gone:
		return false // abandoned: its goroutine ended; a forking one lives as long as QEMU
	default:
		return true
	}
}

// A prepared thread no launch takes ends with DropPrepared, with its namespace and taps.
func TestDropPrepared(t *testing.T) {
	leakcheck.Goroutines(t)
	l := &Launcher{}
	l.PrepareBoot(1)
	prepared := l.prepared.thread
	l.DropPrepared()
	select {
	case <-prepared.gone:
	default:
		t.Fatal("DropPrepared returned before the prepared thread ended")
	}
	if left, _ := l.takePrepared(); left != nil {
		t.Error("a prepared thread is still there after DropPrepared")
	}
}
