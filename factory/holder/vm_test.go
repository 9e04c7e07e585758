package holder

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The pod daemon kills a handed-out VM's QEMU through a pidfd only if the pid is the
// holder's child: anything else could be a recycled pid.
func TestChildPidfdChecksTheParent(t *testing.T) {
	child := exec.Command("sleep", "100")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	for _, tt := range []struct {
		name        string
		pid, parent int
		ok          bool
	}{
		{"the parent's child", child.Process.Pid, os.Getpid(), true},
		{"another process's child", child.Process.Pid, os.Getppid(), false},
		{"no such process", 1 << 30, os.Getpid(), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fd, err := childPidfd(tt.pid, tt.parent)
			if (err == nil) != tt.ok {
				t.Fatalf("childPidfd(%d, %d) = %d, %v; want ok=%v", tt.pid, tt.parent, fd, err, tt.ok)
			}
			if fd >= 0 {
				unix.Close(fd)
			}
		})
	}
}

// Kill of a handed-out VM signals QEMU itself, and returns once the holder exited (a
// holder exits when its QEMU is gone).
func TestKillSignalsQEMUThroughItsPidfd(t *testing.T) {
	// The "holder" is a shell whose only child, the "QEMU", is a sleep: it exits when the
	// sleep is gone.
	holder := exec.Command("sh", "-c", "sleep 100 & echo $!; wait")
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill() })
	var qemuPid int
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	if _, err := fmt.Sscan(string(buf[:n]), &qemuPid); err != nil {
		t.Fatalf("child pid %q: %v", buf[:n], err)
	}
	fd, err := childPidfd(qemuPid, holder.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p, err := watchProcess(holder.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// No holder socket: a request to the holder would fail, only the pidfd can kill.
	vm := &VM{id: "t", proc: p, qemu: fd}
	vm.info.Dir = t.TempDir()
	done := make(chan error, 1)
	go func() { done <- vm.Kill() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Kill did not return within 30 s")
	}
	// The holder ended because its QEMU did, not because it was killed (what Kill does
	// when it cannot reach QEMU).
	if err := holder.Wait(); err != nil {
		t.Errorf("the holder did not end by itself: %v", err)
	}
	if vm.qemu != -1 {
		t.Errorf("QEMU's pidfd left open (%d)", vm.qemu)
	}
}
