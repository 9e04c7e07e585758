//go:build integration

package qemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
)

// SIGKILL of the process that launched a VM kills QEMU too, even though the goroutine
// that called Launch (and its locked thread) had long exited: see runHelper.
func TestPdeathsig(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	// Become the orphaned QEMU's new parent, so the test can reap it instead of leaving a
	// zombie with whatever runs as pid 1 here.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+string(cfgJSON))
	helper.Stderr = os.Stderr
	stdin, err := helper.StdinPipe() // held open: the helper blocks on it
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { helper.Process.Kill(); helper.Wait() })

	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	var pid int
	select {
	case l := <-line:
		if pid, err = strconv.Atoi(strings.TrimPrefix(l, "pid ")); err != nil {
			t.Fatalf("helper said %q", l)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("helper did not report a VM")
	}
	if !alive(pid) {
		t.Fatalf("qemu %d is not running before the helper is killed", pid)
	}

	if err := helper.Process.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			unix.Kill(pid, unix.SIGKILL)
			t.Fatalf("qemu %d survived its parent by 5 s", pid)
		}
		time.Sleep(10 * time.Millisecond) // polling another process's state, with a deadline
	}
	if err := reap(pid, 5*time.Second); err != nil {
		t.Error(err)
	}
	if pids := qemutest.QEMUsFor(cfg.Dir); len(pids) > 0 {
		t.Errorf("qemu still running: %v", pids)
	}
}

// alive reports whether pid runs (exists and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// reap collects pid, which became our child when its parent died (we are a subreaper).
// A dead multi-threaded process can only be reaped once all its threads are gone, so this
// blocks, up to a deadline.
func reap(pid int, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err == unix.ECHILD {
			err = nil // not ours: someone else reaps it
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("qemu %d not reaped within %v", pid, timeout)
	}
}
