package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
)

func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func pidfdOf(t *testing.T, pid int) *os.File {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "pidfd")
}

// waitReturns runs waitPidfd in the background and reports its result.
func waitReturns(f *os.File) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- waitPidfd(f) }()
	return ch
}

func TestWaitPidfd(t *testing.T) {
	tests := []struct {
		name string
		// end ends the wait: the process dies (want nil) or the pidfd is closed (an error).
		end     func(cmd *exec.Cmd, pidfd *os.File)
		wantErr bool
	}{
		{"process killed", func(cmd *exec.Cmd, _ *os.File) { cmd.Process.Kill() }, false},
		{"pidfd closed", func(_ *exec.Cmd, pidfd *os.File) { pidfd.Close() }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := startSleep(t)
			pidfd, pid, err := pollablePidfd(pidfdOf(t, cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			defer pidfd.Close()
			if pid != cmd.Process.Pid {
				t.Errorf("pidfd names pid %d, want %d", pid, cmd.Process.Pid)
			}
			done := waitReturns(pidfd)
			select {
			case err := <-done:
				t.Fatalf("waitPidfd returned %v while the process runs", err)
			case <-time.After(100 * time.Millisecond):
			}
			tt.end(cmd, pidfd)
			select {
			case err := <-done:
				if (err != nil) != tt.wantErr {
					t.Errorf("waitPidfd = %v, want error %v", err, tt.wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("waitPidfd did not return")
			}
		})
	}
}

func TestPollablePidfdRefusesOtherDescriptors(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, _, err := pollablePidfd(r); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("a pipe was taken for a pidfd: %v", err)
	}
}
