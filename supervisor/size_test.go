package supervisor

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
)

// recordingFactory records the requests it gets and boots nothing.
type recordingFactory struct {
	mu   sync.Mutex
	reqs []factory.Request
	got  chan struct{}
}

func (f *recordingFactory) GetVM(_ context.Context, req factory.Request) (hypervisor.VM, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	close(f.got)
	return nil, errors.New("no VMs here")
}
func (f *recordingFactory) Name() string { return "recording" }
func (f *recordingFactory) Close() error { return nil }

func newSizedSupervisor(t *testing.T) (*Supervisor, *recordingFactory) {
	t.Helper()
	f := &recordingFactory{got: make(chan struct{})}
	s, err := New(context.Background(), Config{
		PodID: "p", Dir: t.TempDir(), Factory: f,
		VM: factory.Request{CPUs: 1, MemoryMiB: 128}, SizeFromSpec: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, f
}

// The first container's resources size the VM; the boot waits for them.
func TestSizeVMFromFirstContainer(t *testing.T) {
	s, f := newSizedSupervisor(t)
	defer s.Close(context.Background())
	select {
	case <-f.got:
		t.Fatal("the VM was requested before the first container sized it")
	case <-time.After(50 * time.Millisecond):
	}
	quota, period, limit := int64(200000), uint64(100000), int64(512<<20)
	spec := &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{
		CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &limit},
	}}}
	if err := s.SizeVM(spec); err != nil {
		t.Fatal(err)
	}
	// A later container does not resize it.
	if err := s.SizeVM(&specs.Spec{}); err != nil {
		t.Fatal(err)
	}
	<-f.got
	if err := s.waitReady(context.Background()); err == nil {
		t.Fatal("boot did not fail with a factory that has no VMs")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) != 1 || f.reqs[0].CPUs != 2 || f.reqs[0].MemoryMiB != 512 || f.reqs[0].ID != "p" {
		t.Errorf("requests %+v, want one for 2 vCPUs and 512 MiB", f.reqs)
	}
}

// Never below the defaults; a bad cpuset refuses that container and leaves the size open.
func TestSizeVMDefaultsAndErrors(t *testing.T) {
	s, f := newSizedSupervisor(t)
	defer s.Close(context.Background())
	bad := &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "x"}}}}
	if err := s.SizeVM(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad cpuset: %v", err)
	}
	limit := int64(64 << 20)
	if err := s.SizeVM(&specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}}}); err != nil {
		t.Fatal(err)
	}
	<-f.got
	s.waitReady(context.Background())
	if r := f.reqs[0]; r.CPUs != 1 || r.MemoryMiB != 128 {
		t.Errorf("request %+v, want the defaults", r)
	}
}

// A pod closed before its first container never boots a VM, and Close does not hang.
func TestCloseBeforeSized(t *testing.T) {
	s, f := newSizedSupervisor(t)
	done := make(chan error, 1)
	go func() { done <- s.Close(context.Background()) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs while the boot waits for a size")
	}
	if err := s.waitReady(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("boot after Close: %v", err)
	}
	if len(f.reqs) != 0 {
		t.Errorf("a VM was requested: %+v", f.reqs)
	}
}
