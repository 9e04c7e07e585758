//go:build integration

package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
)

// helperEnv makes the test binary act as a process that launches a VM and waits to be
// killed (see TestPdeathsig) instead of running tests.
const helperEnv = "RUNV_QEMU_TEST_HELPER"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(helperEnv); cfg != "" {
		os.Exit(runHelper(cfg))
	}
	code := m.Run()
	if initrdDir != "" {
		os.RemoveAll(initrdDir)
	}
	os.Exit(code)
}

// runHelper launches the VM described by cfgJSON from a goroutine that locks its thread
// and returns (so the thread that called Launch is destroyed), proves the VM survived that
// by talking to the guest, prints "pid N" and blocks until killed.
func runHelper(cfgJSON string) int {
	var cfg hypervisor.Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Println("err", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		v   hypervisor.VM
		err error
	)
	launched := make(chan struct{})
	go func() {
		defer close(launched)
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		v, err = (&Launcher{}).Launch(ctx, cfg)
	}()
	<-launched
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	ch, err := v.Channels(ctx)
	if err == nil {
		_, err = roundTrip(ch.Control, "ping helper", 60*time.Second)
	}
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	fmt.Println("pid", v.Pid())
	io.Copy(io.Discard, os.Stdin) // the parent never closes it: we wait for SIGKILL
	return 0
}

// roundTrip sends one line to the test init and returns its answer.
func roundTrip(c net.Conn, line string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no answer to %q: %w", line, err)
	}
	return strings.TrimSpace(answer), nil
}

// assertGone checks that the VM's QEMU is reaped and its sockets and pid file removed.
func assertGone(t *testing.T, v hypervisor.VM, dir string) {
	t.Helper()
	select {
	case <-v.Done():
	default:
		t.Fatal("Done() not closed")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", v.Pid())); err == nil {
		if pids := qemutest.QEMUsFor(dir); len(pids) > 0 {
			t.Errorf("qemu still running: %v", pids)
		}
	}
	for _, f := range pathsIn(dir).transient() {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

var (
	initrdOnce sync.Once
	initrdDir  string
	initrdPath string
	initrdErr  error
)

// testInitrd is the busybox stand-in for the agent, built once per test binary.
func testInitrd(t *testing.T) string {
	t.Helper()
	initrdOnce.Do(func() {
		if initrdDir, initrdErr = os.MkdirTemp("", "runv-initrd"); initrdErr != nil {
			return
		}
		initrdPath = filepath.Join(initrdDir, "initrd.gz")
		initrdErr = qemutest.WriteInitrd(initrdPath)
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrdPath
}

// onEachMachine runs test in a parallel subtest per machine type, each with a VM config of
// its own (vmConfig) for that machine.
func onEachMachine(t *testing.T, test func(t *testing.T, cfg hypervisor.Config)) {
	for _, machine := range []string{hypervisor.MachineMicroVM, hypervisor.MachineQ35} {
		t.Run(machine, func(t *testing.T) {
			t.Parallel()
			cfg := vmConfig(t)
			cfg.Machine = machine
			test(t, cfg)
		})
	}
}

// vmConfig returns a TCG config with fresh directories, or skips without VM support.
func vmConfig(t *testing.T) hypervisor.Config {
	t.Helper()
	qemutest.RequireVM(t)
	base := qemutest.Dir(t)
	cfg := hypervisor.Config{
		ID:       strings.ReplaceAll(t.Name(), "/", "-"),
		Dir:      filepath.Join(base, "vm"),
		ShareDir: filepath.Join(base, "share"),
		Kernel:   qemutest.Kernel(t),
		Initrd:   testInitrd(t),
		Accel:    hypervisor.AccelTCG,
	}
	for _, d := range []string{cfg.Dir, cfg.ShareDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// mustChannels connects to v's guest (60 s at most) and closes the channels at the end of
// the test.
func mustChannels(t *testing.T, v hypervisor.VM) *hypervisor.Channels {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ch, err := v.Channels(ctx)
	if err != nil {
		t.Fatalf("the guest's channels: %v (console: %s)", err, tail(v.ConsoleLog(), 5))
	}
	t.Cleanup(func() { ch.Close() })
	return ch
}

// qemuStderr is what v's QEMU wrote on its stderr so far (qemu.log in its directory).
func qemuStderr(v hypervisor.VM) string {
	b, _ := os.ReadFile(pathsIn(filepath.Dir(v.ConsoleLog())).QEMULog)
	return string(b)
}

// mustLaunch boots cfg and kills the VM at the end of the test whatever happens.
func mustLaunch(t *testing.T, l *Launcher, cfg hypervisor.Config) hypervisor.VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := l.Launch(ctx, cfg)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	t.Cleanup(func() { v.Kill() })
	return v
}
