package shim

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// dieOfOOMChild is set in the environment of the test binary re-run as a stand-in that
// calls dieOfOOM for the container it names.
const dieOfOOMChild = "RUNV_TEST_DIE_OF_OOM"

// exitAfterRefusal is the exit code of a child whose dieOfOOM returned.
const exitAfterRefusal = 3

// bigStandInChild is set in the environment of the test binary re-run as another stand-in
// of the container, bigger than the dying one: it holds bigStandInSize of touched memory,
// says "ready", and waits for its stdin to close.
const (
	bigStandInChild = "RUNV_TEST_BIG_STAND_IN"
	bigStandInSize  = 24 << 20
)

// A stand-in alone in its memory cgroup, or beside a bigger stand-in of the container,
// dies of a real OOM kill there (the other one lives on): SIGKILLed by the kernel, and the
// cgroup's OOM notification (what containerd's runc shim watches) fires. One that shares its
// cgroup with another process does not lower the limit and returns.
func TestDieOfOOM(t *testing.T) {
	if id := os.Getenv(dieOfOOMChild); id != "" {
		os.Stdin.Read(make([]byte, 1)) // in its cgroup now
		err := dieOfOOM(id)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(exitAfterRefusal)
	}
	if os.Getenv(bigStandInChild) != "" {
		b := make([]byte, bigStandInSize)
		for i := range b {
			b[i] = 1
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		os.Exit(int(b[len(b)-1]) - 1) // b stays live until here
	}
	if os.Getuid() != 0 {
		t.Skip("needs root: makes host cgroups")
	}
	for _, tc := range []struct {
		name    string
		foreign bool // another process in the cgroup
		standIn bool // another stand-in of the container, bigger
	}{{name: "alone"}, {name: "with a foreign process", foreign: true}, {name: "beside a bigger stand-in", standIn: true}} {
		t.Run(tc.name, func(t *testing.T) {
			id := "runv-oom-test-" + filepath.Base(t.TempDir())
			limit := int64(64 << 20)
			spec := &specs.Spec{Linux: &specs.Linux{
				CgroupsPath: "/" + id,
				Resources:   &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}},
			}}
			child := exec.Command(os.Args[0], "-test.run=^TestDieOfOOM$")
			child.Env = append(os.Environ(), dieOfOOMChild+"="+id)
			release, err := child.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			child.Stderr = &stderr
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { child.Process.Kill(); child.Wait() }()
			cg, err := CreateCgroup(id, spec, false, child.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := cg.Destroy(id, spec); err != nil {
					t.Errorf("destroy the test cgroup: %v", err)
				}
			}()
			if tc.foreign {
				sleeper := exec.Command("sleep", "100")
				if err := sleeper.Start(); err != nil {
					t.Fatal(err)
				}
				defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
				if err := cg.Add(sleeper.Process.Pid); err != nil {
					t.Fatal(err)
				}
			}
			var sibling *exec.Cmd
			var hold io.WriteCloser
			if tc.standIn {
				// Its command line as a stand-in's: `runv shim ... --id ID`.
				sibling = exec.Command(os.Args[0], "-test.run=^TestDieOfOOM$", "shim", "--id", id)
				sibling.Env = append(os.Environ(), bigStandInChild+"=1")
				if hold, err = sibling.StdinPipe(); err != nil {
					t.Fatal(err)
				}
				out, err := sibling.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := sibling.Start(); err != nil {
					t.Fatal(err)
				}
				defer func() { hold.Close(); sibling.Process.Kill(); sibling.Wait() }() // a second Wait is harmless
				if err := cg.Add(sibling.Process.Pid); err != nil {
					t.Fatal(err)
				}
				if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
					t.Fatalf("the bigger stand-in: %q %v", line, err)
				}
			}
			notified := watchOOM(t, cg)
			release.Write([]byte{1})
			err = child.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("child: %v", err)
			}
			ws := ee.Sys().(syscall.WaitStatus)
			if tc.foreign {
				if ws.Exited() && ws.ExitStatus() == exitAfterRefusal && strings.Contains(stderr.String(), "not a stand-in") {
					assertMemoryLimit(t, cg, limit)
				} else {
					t.Errorf("with a foreign process in the cgroup: %v, stderr %q; want a refusal", err, stderr.String())
				}
				return
			}
			if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child: %v, stderr %q; want it killed by SIGKILL", err, stderr.String())
			}
			if n := notified(); n == 0 {
				t.Errorf("the cgroup's OOM notification did not fire")
			}
			if sibling != nil {
				// Alive, it exits 0 once its stdin closes.
				hold.Close()
				if err := sibling.Wait(); err != nil {
					t.Errorf("the other, bigger stand-in: %v; want it alive until told to exit", err)
				}
			}
		})
	}
}

// watchOOM watches the cgroup for OOM kills as containerd's runc shim does; the returned
// function reads how many were notified since.
func watchOOM(t *testing.T, cg *Cgroup) func() uint64 {
	t.Helper()
	dir := cg.Paths["memory"]
	if cgroups.IsCgroup2UnifiedMode() {
		dir = cg.Paths[""]
		return func() uint64 {
			b, _ := os.ReadFile(filepath.Join(dir, "memory.events"))
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
					n, _ := strconv.ParseUint(v, 10, 64)
					return n
				}
			}
			return 0
		}
	}
	// cgroup v1: an eventfd registered for memory.oom_control.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(efd) })
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(fmt.Sprintf("%d %d", efd, ctl.Fd())), 0); err != nil {
		t.Fatal(err)
	}
	return func() uint64 {
		b := make([]byte, 8)
		if n, err := unix.Read(efd, b); err != nil || n != 8 {
			return 0
		}
		return binary.LittleEndian.Uint64(b)
	}
}

func assertMemoryLimit(t *testing.T, cg *Cgroup, want int64) {
	t.Helper()
	file := filepath.Join(cg.Paths["memory"], "memory.limit_in_bytes")
	if cgroups.IsCgroup2UnifiedMode() {
		file = filepath.Join(cg.Paths[""], "memory.max")
	}
	assertFile(t, file, strconv.FormatInt(want, 10))
}
