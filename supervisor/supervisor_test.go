package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/state"
)

// fakeAgent stands in for the guest agent behind the supervisor's guestAgent seam: it
// records the commands it gets, answers them as the agent would, and lets the test end
// processes. Pure unit test: no VM.
type fakeAgent struct {
	mu      sync.Mutex
	calls   []agentproto.MsgType
	created []agentproto.Container
	seq     uint64
	pid     int
	// fail makes the next command of that type fail with the error.
	fail    map[agentproto.MsgType]error
	waiters map[string]*fakeWaiter // by container/process
	done    chan struct{}
	// outputOpen gives new processes a stdout that stays open until they exit (else
	// their output ends at once, as a process's that closed it).
	outputOpen bool
	// startsOnCreate: NEWCONTAINER with Start starts the container (this runv's agent);
	// without it the agent ignores Start (an older runv's).
	startsOnCreate bool
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{pid: 100, fail: map[agentproto.MsgType]error{}, waiters: map[string]*fakeWaiter{}, done: make(chan struct{})}
}

func (a *fakeAgent) Call(_ context.Context, t agentproto.MsgType, payload, reply any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, t)
	if err := a.fail[t]; err != nil {
		delete(a.fail, t)
		return err
	}
	switch t {
	case agentproto.MsgNewContainer, agentproto.MsgExecCmd:
		started := false
		if m, ok := payload.(agentproto.Container); ok {
			a.created = append(a.created, m)
			started = m.Start && a.startsOnCreate
		}
		a.pid++
		*reply.(*agentproto.ProcessStarted) = agentproto.ProcessStarted{Pid: a.pid, Started: started}
	case agentproto.MsgSignalProcess:
		m := payload.(agentproto.SignalProcess)
		if w := a.waiters[m.Container+"/"+m.Process]; w != nil && m.Signal == int(syscall.SIGKILL) {
			w.exit(agentproto.ProcessExit{ExitCode: 137, Signal: 9})
		}
	}
	return nil
}

func (a *fakeAgent) NextSeq() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seq++
	return a.seq
}

func (a *fakeAgent) Watch(container, process string, _ agentproto.Stdio) (exitWaiter, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := &fakeWaiter{exited: make(chan agentproto.ProcessExit, 1), stdin: &stdinRecorder{closed: make(chan struct{})}}
	if a.outputOpen {
		w.stdout, w.stdoutW = io.Pipe()
	}
	a.waiters[container+"/"+process] = w
	return w, nil
}

func (a *fakeAgent) Done() <-chan struct{} { return a.done }
func (a *fakeAgent) Err() error            { return nil }
func (a *fakeAgent) Close() error          { return nil }

// exit ends a process as the agent reports it.
func (a *fakeAgent) exit(container, process string, e agentproto.ProcessExit) {
	a.mu.Lock()
	w := a.waiters[container+"/"+process]
	a.mu.Unlock()
	w.exit(e)
}

// failNext makes the next command of type t fail with err.
func (a *fakeAgent) failNext(t agentproto.MsgType, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail[t] = err
}

// containers are the NEWCONTAINER payloads the agent got.
func (a *fakeAgent) containers() []agentproto.Container {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]agentproto.Container(nil), a.created...)
}

func (a *fakeAgent) sent(t agentproto.MsgType) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.calls {
		if c == t {
			n++
		}
	}
	return n
}

type fakeWaiter struct {
	once   sync.Once
	exited chan agentproto.ProcessExit
	stdin  *stdinRecorder
	// stdout is nil unless fakeAgent.outputOpen; the exit closes it.
	stdout  *io.PipeReader
	stdoutW *io.PipeWriter
}

func (w *fakeWaiter) exit(e agentproto.ProcessExit) {
	w.once.Do(func() {
		if w.stdoutW != nil {
			w.stdoutW.Close()
		}
		w.exited <- e
	})
}

func (w *fakeWaiter) Streams() (io.WriteCloser, io.ReadCloser, io.ReadCloser) {
	if w.stdout == nil {
		return w.stdin, nil, nil
	}
	return w.stdin, w.stdout, nil
}

// stdinRecorder is the guest's side of a process's stdin stream: what arrived, and its end.
type stdinRecorder struct {
	mu     sync.Mutex
	got    []byte
	once   sync.Once
	closed chan struct{}
}

func (r *stdinRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, p...)
	return len(p), nil
}

func (r *stdinRecorder) Close() error {
	r.once.Do(func() { close(r.closed) })
	return nil
}

func (r *stdinRecorder) received() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.got)
}

func (w *fakeWaiter) Wait(ctx context.Context) (agentproto.ProcessExit, error) {
	select {
	case e := <-w.exited:
		return e, nil
	case <-ctx.Done():
		return agentproto.ProcessExit{}, ctx.Err()
	}
}

// idleVM is a VM that is up and does nothing.
type idleVM struct{ done chan struct{} }

func (v *idleVM) ID() string { return "p" }
func (v *idleVM) Pid() int   { return 0 }
func (v *idleVM) Channels(context.Context) (*hypervisor.Channels, error) {
	return nil, errors.New("idle VM")
}
func (v *idleVM) Done() <-chan struct{}          { return v.done }
func (v *idleVM) Shutdown(context.Context) error { return nil }
func (v *idleVM) Kill() error                    { return nil }
func (v *idleVM) ConsoleLog() string             { return "" }
func (v *idleVM) Accel() string                  { return hypervisor.AccelTCG }
func (v *idleVM) Restored() bool                 { return false }
func (v *idleVM) Grown() bool                    { return false }

type idleFactory struct{}

func (idleFactory) GetVM(context.Context, factory.Request) (hypervisor.VM, error) {
	return &idleVM{done: make(chan struct{})}, nil
}
func (idleFactory) Name() string { return "idle" }
func (idleFactory) Close() error { return nil }

// newFakePod is a supervisor whose VM is idle and whose agent is a fakeAgent.
func newFakePod(t *testing.T) (*Supervisor, *fakeAgent) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the supervisor bind-mounts rootfs into the pod share: needs root")
	}
	a := newFakeAgent()
	s, err := New(context.Background(), Config{
		PodID: "p", Dir: t.TempDir(), Factory: idleFactory{},
		connect: func(context.Context, hypervisor.VM, string, func(string)) (guestAgent, error) { return a, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s, a
}

// newRequest is a container of a bundle with an empty rootfs, its paths resolved.
func newRequest(t *testing.T, id string) CreateRequest {
	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	return CreateRequest{ID: id, Bundle: bundle, Spec: &specs.Spec{
		Version: specs.Version, Root: &specs.Root{Path: rootfs},
		Process: &specs.Process{Args: []string{"sleep", "1000"}, Cwd: "/"},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace, Path: "/proc/4242/ns/pid"}, {Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
			{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
		}},
	}}
}

// A container's life as the pod daemon sees it: each operation checks the status it needs,
// and a status that does not fit is refused as a failed precondition before anything is
// sent to the guest.
func TestContainerLifecycleStatusChecks(t *testing.T) {
	s, a := newFakePod(t)
	ctx := context.Background()
	if _, err := s.Create(ctx, newRequest(t, "c1")); err != nil {
		t.Fatal(err)
	}
	status := func() string {
		st, err := s.State("c1")
		if err != nil {
			t.Fatal(err)
		}
		return st.Status
	}
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%s while %s: %v, want a failed precondition", what, status(), err)
		}
	}
	steps := []struct {
		do   func() error
		want string // status after
	}{
		{func() error { return nil }, state.StatusCreated},
		{func() error { refused("resume", s.Resume(ctx, "c1")); return nil }, state.StatusCreated},
		{func() error { return s.Start(ctx, "c1") }, state.StatusRunning},
		{func() error { refused("start", s.Start(ctx, "c1")); return nil }, state.StatusRunning},
		{func() error { refused("delete", s.Delete(ctx, "c1")); return nil }, state.StatusRunning},
		{func() error { return s.Pause(ctx, "c1") }, state.StatusPaused},
		{func() error {
			_, err := s.Exec(ctx, ExecRequest{ID: "c1", Process: "e1", Spec: &specs.Process{Args: []string{"true"}}})
			refused("exec", err)
			return nil
		}, state.StatusPaused},
		{func() error { return s.Resume(ctx, "c1") }, state.StatusRunning},
		{func() error { a.exit("c1", agentproto.InitProcessID, agentproto.ProcessExit{ExitCode: 3}); return nil }, state.StatusStopped},
	}
	for i, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if st.want == state.StatusStopped {
			if e, err := s.Wait(ctx, "c1", ""); err != nil || e.ExitCode != 3 {
				t.Fatalf("wait: %+v, %v", e, err)
			}
		}
		if got := status(); got != st.want {
			t.Fatalf("step %d: status %s, want %s", i, got, st.want)
		}
	}
	if err := s.Delete(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.State("c1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("state after delete: %v", err)
	}
	select {
	case <-s.Empty():
	case <-time.After(10 * time.Second):
		t.Error("the pod is not empty after its last container was deleted")
	}
	if n := a.sent(agentproto.MsgRemoveContainer); n != 1 {
		t.Errorf("REMOVECONTAINER sent %d times", n)
	}
}

// The host sends no namespace path to the guest, only whether the container asks for the
// pod's PID namespace; the spec it got is left as it was.
func TestCreateSendsNoNamespacePaths(t *testing.T) {
	s, a := newFakePod(t)
	req := newRequest(t, "c1")
	before, _ := json.Marshal(req.Spec)
	if _, err := s.Create(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	sent := a.containers()[0]
	for _, ns := range sent.Spec.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace %s sent with path %s", ns.Type, ns.Path)
		}
	}
	if !sent.SharePID || len(sent.Spec.Linux.Namespaces) != 4 {
		t.Errorf("sent %+v, SharePID %v", sent.Spec.Linux.Namespaces, sent.SharePID)
	}
	if after, _ := json.Marshal(req.Spec); string(after) != string(before) {
		t.Error("Create modified the caller's spec")
	}
}

// A create the guest refuses leaves nothing: no container, no share directory.
func TestCreateRefusedByTheGuestLeavesNothing(t *testing.T) {
	s, a := newFakePod(t)
	a.failNext(agentproto.MsgNewContainer, errors.New("guest says no"))
	if _, err := s.Create(context.Background(), newRequest(t, "c1")); err == nil {
		t.Fatal("create succeeded although the guest refused it")
	}
	if _, err := s.State("c1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("state after a refused create: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.share, "c1")); !os.IsNotExist(err) {
		t.Errorf("share directory left: %v", err)
	}
	// A relative root.path is the caller's mistake (oci.LoadBundle resolves it).
	req := newRequest(t, "c2")
	req.Spec.Root.Path = "rootfs"
	if _, err := s.Create(context.Background(), req); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("relative root.path: %v", err)
	}
}

// CloseStdin (containerd's CloseIO) ends a process's stdin only after what the client wrote
// reached the guest, and through the stdin stream itself: a CLOSESTDIN command on the
// control channel could overtake the input (kubectl attach lost its input so). A client
// that keeps its end open has it cut after stdinDrainTimeout.
func TestCloseStdinAfterTheInput(t *testing.T) {
	for _, tc := range []struct {
		name       string
		clientEnds bool
	}{{"client closed its end", true}, {"client keeps its end open", false}} {
		t.Run(tc.name, func(t *testing.T) {
			s, a := newFakePod(t)
			a.outputOpen = true
			defer a.exit("c1", agentproto.InitProcessID, agentproto.ProcessExit{})
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			req := newRequest(t, "c1")
			req.Stdio.Stdin = r
			if _, err := s.Create(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			w.Write([]byte("hello\n"))
			if tc.clientEnds {
				w.Close()
			}
			start := time.Now()
			if err := s.CloseStdin(context.Background(), "c1", ""); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			a.mu.Lock()
			in := a.waiters["c1/init"].stdin
			a.mu.Unlock()
			select {
			case <-in.closed:
			default:
				t.Fatal("CloseStdin returned before the guest's stdin was ended")
			}
			if got := in.received(); got != "hello\n" {
				t.Errorf("the guest got %q before the end of stdin, want %q", got, "hello\n")
			}
			if n := a.sent(agentproto.MsgCloseStdin); n != 0 {
				t.Errorf("%d CLOSESTDIN sent on the control channel, want none", n)
			}
			if tc.clientEnds && took >= stdinDrainTimeout {
				t.Errorf("CloseStdin took %v although the client had closed its end", took)
			}
			if !tc.clientEnds && took < stdinDrainTimeout {
				t.Errorf("CloseStdin cut an open input after %v, before %v", took, stdinDrainTimeout)
			}
		})
	}
}

// stopRecordingVM is an idle VM that records how it was stopped.
type stopRecordingVM struct {
	idleVM
	mu              sync.Mutex
	shutdown, kills int
	killed          chan struct{} // if set, closed by the first Kill
}

func (v *stopRecordingVM) Shutdown(context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.shutdown++
	return nil
}

func (v *stopRecordingVM) Kill() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.kills++
	if v.killed != nil && v.kills == 1 {
		close(v.killed)
	}
	return nil
}

func (v *stopRecordingVM) killCount() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.kills
}

type vmFactory struct{ vm hypervisor.VM }

func (f vmFactory) GetVM(context.Context, factory.Request) (hypervisor.VM, error) { return f.vm, nil }
func (vmFactory) Name() string                                                    { return "one VM" }
func (vmFactory) Close() error                                                    { return nil }

// Closing a pod ends its VM at once when the guest acknowledged DESTROYPOD (it stopped
// everything and synced: its own power-off only costs time) or when every container was
// deleted (nothing runs in the guest: DESTROYPOD is not even sent), and asks a guest that
// did not answer to power off.
func TestCloseStopsTheVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the supervisor bind-mounts rootfs into the pod share: needs root")
	}
	for _, tt := range []struct {
		name                   string
		destroyErr             error
		emptied                bool // a container was created and deleted before Close
		wantDestroy            int
		wantShutdown, wantKill int
	}{
		{name: "guest destroyed the pod: QEMU is ended at once", wantDestroy: 1, wantKill: 1},
		{name: "guest did not answer: it is asked to power off", destroyErr: fmt.Errorf("no answer: %w", errdefs.ErrUnavailable), wantDestroy: 1, wantShutdown: 1},
		{name: "every container deleted: QEMU is ended without DESTROYPOD", emptied: true, wantKill: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newFakeAgent()
			if tt.destroyErr != nil {
				a.failNext(agentproto.MsgDestroyPod, tt.destroyErr)
			}
			vm := &stopRecordingVM{idleVM: idleVM{done: make(chan struct{})}}
			s, err := New(context.Background(), Config{
				PodID: "p", Dir: t.TempDir(), Factory: vmFactory{vm},
				connect: func(context.Context, hypervisor.VM, string, func(string)) (guestAgent, error) { return a, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.waitReady(context.Background()); err != nil {
				t.Fatal(err)
			}
			if tt.emptied {
				ctx := context.Background()
				if _, err := s.Create(ctx, newRequest(t, "c1")); err != nil {
					t.Fatal(err)
				}
				if err := s.Delete(ctx, "c1"); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := a.sent(agentproto.MsgDestroyPod); n != tt.wantDestroy {
				t.Errorf("DESTROYPOD sent %d times, want %d", n, tt.wantDestroy)
			}
			if vm.shutdown != tt.wantShutdown || vm.kills != tt.wantKill {
				t.Errorf("VM shut down %d and killed %d times, want %d and %d", vm.shutdown, vm.kills, tt.wantShutdown, tt.wantKill)
			}
		})
	}
}

// A pod that ends with its last container (the pod daemon's) leaves that container's
// guest record to the VM's end: no REMOVECONTAINER for it. Any other delete removes the
// record, as does a pod that goes on without containers (the containerd shim's).
func TestDeleteRemovesInGuestUnlessThePodEnds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the supervisor bind-mounts rootfs into the pod share: needs root")
	}
	for _, tt := range []struct {
		name          string
		endsWhenEmpty bool
		containers    []string // created, then deleted in this order
		wantRemoves   int
	}{
		{name: "pod ends: the last container's record goes with the VM", endsWhenEmpty: true, containers: []string{"c1"}, wantRemoves: 0},
		{name: "pod ends: a container that is not the last is removed", endsWhenEmpty: true, containers: []string{"c1", "c2"}, wantRemoves: 1},
		{name: "pod goes on: every container is removed", containers: []string{"c1", "c2"}, wantRemoves: 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newFakeAgent()
			s, err := New(context.Background(), Config{
				PodID: "p", Dir: t.TempDir(), Factory: idleFactory{}, EndsWhenEmpty: tt.endsWhenEmpty,
				connect: func(context.Context, hypervisor.VM, string, func(string)) (guestAgent, error) { return a, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close(context.Background()) })
			ctx := context.Background()
			for _, id := range tt.containers {
				if _, err := s.Create(ctx, newRequest(t, id)); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range tt.containers {
				if err := s.Delete(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if n := a.sent(agentproto.MsgRemoveContainer); n != tt.wantRemoves {
				t.Errorf("REMOVECONTAINER sent %d times, want %d", n, tt.wantRemoves)
			}
			select {
			case <-s.Empty():
			default:
				t.Error("the pod is not empty after its containers were deleted")
			}
		})
	}
}
