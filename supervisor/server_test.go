package supervisor

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/internal/fdpass"
)

// Exec takes the stand-in pidfd that came with the stdio and watches it once the process
// exists: the stand-in's death kills the process; a descriptor that is no pidfd fails the
// call and kills the process at once, which would otherwise run unwatched.
func TestExecWatchesTheStandInItCarries(t *testing.T) {
	s, a := newFakePod(t)
	sock := filepath.Join(t.TempDir(), "stdio.sock")
	srv, err := fdpass.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	g := &server{s: s, stdio: srv}
	ctx := context.Background()
	if _, err := s.Create(ctx, newRequest(t, "c1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(specs.Process{Args: []string{"sleep", "1000"}, Cwd: "/"})
	execWith := func(process string, standIn *os.File) error {
		token := "t-" + process
		if err := fdpass.Send(sock, token, []*os.File{standIn}); err != nil {
			t.Fatal(err)
		}
		_, err := g.Exec(ctx, &podapi.ExecRequest{Id: "c1", Process: process, ProcessSpec: spec, Stdio: &podapi.Stdio{Token: token, HasStandIn: true}})
		return err
	}
	killedWith := func(process string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if e, err := s.Wait(wctx, "c1", process); err != nil || e.ExitCode != 137 {
			t.Fatalf("process %s: exit %+v, %v; want killed (137)", process, e, err)
		}
	}

	t.Run("stand-in dies", func(t *testing.T) {
		standIn := exec.Command("sleep", "1000")
		if err := standIn.Start(); err != nil {
			t.Fatal(err)
		}
		pidfd, err := unix.PidfdOpen(standIn.Process.Pid, 0)
		if err != nil {
			t.Skipf("no pidfd: %v", err)
		}
		f := os.NewFile(uintptr(pidfd), "pidfd")
		defer f.Close()
		if err := execWith("e1", f); err != nil {
			t.Fatalf("exec: %v", err)
		}
		standIn.Process.Kill()
		standIn.Wait()
		killedWith("e1")
	})
	t.Run("not a pidfd", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		before := a.sent(agentproto.MsgSignalProcess)
		if err := execWith("e2", r); err == nil {
			t.Fatal("exec with a pipe for a stand-in succeeded")
		}
		if a.sent(agentproto.MsgSignalProcess) != before+1 {
			t.Fatal("the process whose stand-in cannot be watched was not killed")
		}
		killedWith("e2")
	})
}
