package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/fdpass"
	"github.com/runv-project/runv/internal/state"
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

// newEndingPod is a pod daemon's supervisor (it ends with its last container) whose VM
// records how it is stopped, behind the gRPC server's methods.
func newEndingPod(t *testing.T) (*server, *Supervisor, *fakeAgent, *stopRecordingVM) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the supervisor bind-mounts rootfs into the pod share: needs root")
	}
	a := newFakeAgent()
	vm := &stopRecordingVM{idleVM: idleVM{done: make(chan struct{})}, killed: make(chan struct{})}
	s, err := New(context.Background(), Config{
		PodID: "p", Dir: t.TempDir(), Factory: vmFactory{vm}, EndsWhenEmpty: true,
		connect: func(context.Context, hypervisor.VM, string, func(string)) (guestAgent, error) { return a, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return &server{s: s}, s, a, vm
}

// createRequest is newRequest as the CLI sends it.
func createRequest(t *testing.T, id string, start bool) *podapi.CreateRequest {
	r := newRequest(t, id)
	spec, err := json.Marshal(r.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return &podapi.CreateRequest{Id: id, Bundle: r.Bundle, Spec: spec, Start: start}
}

// A Create that asks for it also starts the container (a foreground run): one call, and
// one guest command, NEWCONTAINER with Start, for this runv's agent; an older agent, which
// ignores Start, gets STARTCONTAINER right after NEWCONTAINER. One that does not ask leaves
// it created, and a start that fails takes the container with it, as a failed create does.
func TestCreateThatStarts(t *testing.T) {
	for _, tt := range []struct {
		name       string
		start      bool
		olderAgent bool
		startErr   error
		wantStatus string // "" : the container is gone
		wantErr    bool
	}{
		{name: "create only", wantStatus: state.StatusCreated},
		{name: "create and start", start: true, wantStatus: state.StatusRunning},
		{name: "create and start, an older agent", start: true, olderAgent: true, wantStatus: state.StatusRunning},
		{name: "the start fails, an older agent", start: true, olderAgent: true, startErr: errors.New("exec fifo: broken"), wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, s, a, _ := newEndingPod(t)
			a.startsOnCreate = !tt.olderAgent
			if tt.startErr != nil {
				a.failNext(agentproto.MsgStartContainer, tt.startErr)
			}
			resp, err := g.Create(context.Background(), createRequest(t, "c1", tt.start))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Create: %v, want error %v", err, tt.wantErr)
			}
			if err == nil && resp.Started != tt.start {
				t.Errorf("Create answered started=%v, want %v", resp.Started, tt.start)
			}
			wantStarts := 0
			if tt.start && tt.olderAgent {
				wantStarts = 1
			}
			if n := a.sent(agentproto.MsgStartContainer); n != wantStarts {
				t.Errorf("STARTCONTAINER sent %d times, want %d", n, wantStarts)
			}
			if got := a.containers(); len(got) != 1 || got[0].Start != tt.start {
				t.Errorf("NEWCONTAINER payloads %+v, want one with Start=%v", got, tt.start)
			}
			st, err := s.State("c1")
			switch {
			case tt.wantStatus == "" && !errors.Is(err, errdefs.ErrNotFound):
				t.Errorf("after the failed start: state %+v, %v; want the container gone", st, err)
			case tt.wantStatus != "" && (err != nil || st.Status != tt.wantStatus):
				t.Errorf("state %+v, %v; want %s", st, err, tt.wantStatus)
			}
		})
	}
}

// A Wait that asks for it deletes the container once its init exited (a foreground run
// without --keep): the last one's deletion ends the pod's VM at once, before any Close.
// An exec'd process's Wait deletes nothing.
func TestWaitThatDeletes(t *testing.T) {
	ctx := context.Background()
	waitFor := func(t *testing.T, g *server, r *podapi.WaitRequest) (*podapi.WaitResponse, error) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return g.Wait(wctx, r)
	}
	t.Run("the last container", func(t *testing.T) {
		g, s, a, vm := newEndingPod(t)
		if _, err := g.Create(ctx, createRequest(t, "c1", true)); err != nil {
			t.Fatal(err)
		}
		a.exit("c1", agentproto.InitProcessID, agentproto.ProcessExit{ExitCode: 3})
		w, err := waitFor(t, g, &podapi.WaitRequest{Id: "c1", DeleteContainer: true})
		if err != nil || w.ExitCode != 3 || !w.Deleted || !w.PodEmpty {
			t.Fatalf("Wait: %+v, %v; want exit 3, deleted, pod empty", w, err)
		}
		if _, err := s.State("c1"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("the container is still there after Wait deleted it: %v", err)
		}
		select {
		case <-s.Empty():
		default:
			t.Error("the pod is not empty")
		}
		// The VM's end started with the deletion, not with Close.
		select {
		case <-vm.killed:
		case <-time.After(10 * time.Second):
			t.Fatal("the VM was not killed within 10 s of the last container's deletion")
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if n := vm.killCount(); n != 1 || a.sent(agentproto.MsgDestroyPod) != 0 {
			t.Errorf("after Close: %d kills and %d DESTROYPOD, want 1 and 0", n, a.sent(agentproto.MsgDestroyPod))
		}
	})
	t.Run("not the last container", func(t *testing.T) {
		g, s, a, vm := newEndingPod(t)
		for _, id := range []string{"c1", "c2"} {
			if _, err := g.Create(ctx, createRequest(t, id, true)); err != nil {
				t.Fatal(err)
			}
		}
		a.exit("c1", agentproto.InitProcessID, agentproto.ProcessExit{})
		w, err := waitFor(t, g, &podapi.WaitRequest{Id: "c1", DeleteContainer: true})
		if err != nil || !w.Deleted || w.PodEmpty {
			t.Fatalf("Wait: %+v, %v; want deleted, pod not empty", w, err)
		}
		if n := a.sent(agentproto.MsgRemoveContainer); n != 1 {
			t.Errorf("REMOVECONTAINER sent %d times, want 1: the pod goes on", n)
		}
		if _, err := s.State("c2"); err != nil || vm.killCount() != 0 {
			t.Errorf("the other container: %v; VM kills %d: want it running on", err, vm.killCount())
		}
	})
	t.Run("without asking, or an exec", func(t *testing.T) {
		g, s, a, _ := newEndingPod(t)
		if _, err := g.Create(ctx, createRequest(t, "c1", true)); err != nil {
			t.Fatal(err)
		}
		spec, _ := json.Marshal(specs.Process{Args: []string{"true"}, Cwd: "/"})
		if _, err := g.Exec(ctx, &podapi.ExecRequest{Id: "c1", Process: "e1", ProcessSpec: spec}); err != nil {
			t.Fatal(err)
		}
		a.exit("c1", "e1", agentproto.ProcessExit{})
		if w, err := waitFor(t, g, &podapi.WaitRequest{Id: "c1", Process: "e1", DeleteContainer: true}); err != nil || w.Deleted {
			t.Fatalf("Wait for an exec: %+v, %v; want nothing deleted", w, err)
		}
		a.exit("c1", agentproto.InitProcessID, agentproto.ProcessExit{})
		if w, err := waitFor(t, g, &podapi.WaitRequest{Id: "c1"}); err != nil || w.Deleted {
			t.Fatalf("Wait: %+v, %v; want nothing deleted", w, err)
		}
		if st, err := s.State("c1"); err != nil || st.Status != state.StatusStopped {
			t.Errorf("state %+v, %v; want stopped and kept", st, err)
		}
	})
}
