package cachesrv

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
)

// fakeVM is a VM without QEMU.
type fakeVM struct {
	id   string
	done chan struct{}
	once sync.Once
}

func (v *fakeVM) ID() string { return v.id }
func (v *fakeVM) Pid() int   { return 4242 }
func (v *fakeVM) Channels(context.Context) (*hypervisor.Channels, error) {
	return nil, errors.New("fake")
}
func (v *fakeVM) Done() <-chan struct{}          { return v.done }
func (v *fakeVM) Shutdown(context.Context) error { return v.Kill() }
func (v *fakeVM) Kill() error                    { v.once.Do(func() { close(v.done) }); return nil }
func (v *fakeVM) ConsoleLog() string             { return "" }
func (v *fakeVM) Accel() string                  { return hypervisor.AccelTCG }

type fakeFactory struct{ vm *fakeVM }

func (f *fakeFactory) GetVM(_ context.Context, req factory.Request) (hypervisor.VM, error) {
	f.vm = &fakeVM{id: req.ID, done: make(chan struct{})}
	return f.vm, nil
}
func (f *fakeFactory) Name() string { return "fake" }
func (f *fakeFactory) Close() error { return nil }

func init() {
	parkVM = func(context.Context, hypervisor.VM, bool) error { return nil }
}

func TestErrorClassesSurviveTheWire(t *testing.T) {
	for _, class := range []error{errdefs.ErrUnavailable, errdefs.ErrInvalidArgument, errdefs.ErrNotImplemented} {
		r := errResponse(errors.Join(errors.New("context"), class))
		if err := r.err(); !errors.Is(err, class) || !strings.Contains(err.Error(), "context") {
			t.Errorf("%v came back as %v", class, err)
		}
	}
	if err := (response{}).err(); err != nil {
		t.Errorf("no error came back as %v", err)
	}
}

func TestPick(t *testing.T) {
	small := &Pool{Status: PoolStatus{Name: "small", CPUs: 1, MemoryMiB: 128, MaxCPUs: 4, MaxMemoryMiB: 1024}}
	big := &Pool{Status: PoolStatus{Name: "big", CPUs: 2, MemoryMiB: 512}}
	s := NewServer([]*Pool{small, big})
	for _, tt := range []struct {
		cpus, mem int
		want      string
	}{
		{0, 0, "small"},
		{1, 128, "small"},
		{2, 0, "big"},     // fits big as it is, rather than growing small
		{2, 512, "big"},   // likewise
		{3, 256, "small"}, // only small can grow to it
		{8, 128, ""},      // nobody
		{1, 4096, ""},
	} {
		got := ""
		if p := s.pick(tt.cpus, tt.mem); p != nil {
			got = p.Status.Name
		}
		if got != tt.want {
			t.Errorf("pick(%d, %d) = %q, want %q", tt.cpus, tt.mem, got, tt.want)
		}
	}
}

// Without a factory daemon the client boots with its fallback.
func TestClientFallsBackWithoutDaemon(t *testing.T) {
	fb := &fakeFactory{}
	c := &Client{Socket: filepath.Join(t.TempDir(), "none.sock"), Fallback: fb}
	vm, err := c.GetVM(context.Background(), factory.Request{ID: "p", Dir: "/d", ShareDir: "/s"})
	if err != nil {
		t.Fatal(err)
	}
	if vm != fb.vm || c.Name() != factory.KindCache {
		t.Errorf("got %v from %s", vm, c.Name())
	}
}

// A holder boots its VM, reports, answers info, moves the VM's directory on adopt, and
// kills the VM when its new owner exits; the directory stays (it is the pod's now).
func TestHolderAdoptAndOwnerExit(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "vm1")
	if err := os.MkdirAll(filepath.Join(dir, "share"), 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeFactory{}
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- RunHolder(ctx, HolderConfig{ID: "vm1", Dir: dir, ShareDir: filepath.Join(dir, "share"), CPUs: 1, MemoryMiB: 128,
			Factory: f, Parent: os.Getppid()}, w)
	}()
	line, _ := bufio.NewReader(r).ReadString('\n')
	if !strings.HasPrefix(line, "ok ") {
		t.Fatalf("holder reported %q", line)
	}
	sock := filepath.Join(dir, HolderSocket)
	resp, err := call(ctx, sock, request{Op: opInfo})
	if err != nil || resp.VM.Accel != hypervisor.AccelTCG || resp.VM.HolderPid != os.Getpid() || resp.VM.Owner != 0 {
		t.Fatalf("info: %+v, %v", resp.VM, err)
	}
	if _, err := call(ctx, sock, request{Op: opGrow, CPUs: 2}); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("grow of a VM without hot-plug: %v", err)
	}

	owner := exec.Command("sleep", "60")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer owner.Process.Kill()
	podVM := filepath.Join(base, "pod-vm")
	if err := os.Mkdir(podVM, 0o700); err != nil { // as the supervisor makes it: empty
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "share")) // the pool moved it to the pod's share already
	resp, err = call(ctx, sock, request{Op: opAdopt, Pid: owner.Process.Pid, Dir: podVM})
	if err != nil {
		t.Fatal(err)
	}
	if resp.VM.Owner != owner.Process.Pid || resp.VM.Dir != podVM {
		t.Errorf("adopted: %+v", resp.VM)
	}
	if _, err := os.Stat(filepath.Join(podVM, HolderSocket)); err != nil {
		t.Errorf("VM directory not moved: %v", err)
	}
	if _, err := call(ctx, filepath.Join(podVM, HolderSocket), request{Op: opAdopt, Pid: os.Getpid(), Dir: dir}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second adopt: %v", err)
	}

	// The owner goes: the VM goes, and the holder ends, leaving the pod's directory.
	owner.Process.Kill()
	owner.Wait()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("holder did not end after its owner exited")
	}
	select {
	case <-f.vm.Done():
	default:
		t.Error("VM not killed")
	}
	if _, err := os.Stat(podVM); err != nil {
		t.Errorf("the pod's VM directory went: %v", err)
	}
	if _, err := os.Stat(filepath.Join(podVM, HolderSocket)); !os.IsNotExist(err) {
		t.Errorf("holder socket left: %v", err)
	}
}

// A holder whose VM was never handed out takes its directory with it.
func TestHolderStopRemovesPooledDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm1")
	if err := os.MkdirAll(filepath.Join(dir, "share"), 0o700); err != nil {
		t.Fatal(err)
	}
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- RunHolder(ctx, HolderConfig{ID: "vm1", Dir: dir, ShareDir: filepath.Join(dir, "share"), Factory: &fakeFactory{}, Parent: os.Getppid()}, w)
	}()
	if line, _ := bufio.NewReader(r).ReadString('\n'); !strings.HasPrefix(line, "ok ") {
		t.Fatalf("holder reported %q", line)
	}
	if _, err := call(ctx, filepath.Join(dir, HolderSocket), request{Op: opKill}); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pooled VM directory left: %v", err)
	}
}

// A holder refuses to run for a parent that is not its parent (it could not watch it).
func TestHolderChecksParent(t *testing.T) {
	dir := t.TempDir()
	r, w := io.Pipe()
	reported := make(chan string, 1)
	go func() {
		b, _ := bufio.NewReader(r).ReadString('\n')
		reported <- b
	}()
	err := RunHolder(context.Background(), HolderConfig{ID: "x", Dir: dir, Factory: &fakeFactory{}, Parent: os.Getpid()}, w)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("RunHolder with a wrong parent: %v", err)
	}
	if b := <-reported; !strings.HasPrefix(b, "error: ") {
		t.Errorf("reported %q", b)
	}
}
