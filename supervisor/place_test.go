package supervisor

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
)

// pidVM is an idle VM whose process has a pid.
type pidVM struct{ idleVM }

func (*pidVM) Pid() int { return 4242 }

type pidFactory struct{ idleFactory }

func (pidFactory) GetVM(context.Context, factory.Request) (hypervisor.VM, error) {
	return &pidVM{idleVM{done: make(chan struct{})}}, nil
}

// Config.PlaceVM gets the VM's process as soon as the factory handed it over, the pod is
// ready only once it returned, and a placement that fails leaves the pod running (the
// shim's pod runs on outside its cgroup, as it says in its log).
func TestPlaceVMBeforeReady(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{{"placed", nil}, {"placement fails", errors.New("no such cgroup")}} {
		t.Run(tc.name, func(t *testing.T) {
			placing := make(chan int, 1)
			release := make(chan struct{})
			s, err := New(context.Background(), Config{
				PodID: "p", Dir: t.TempDir(), Factory: pidFactory{},
				connect: func(context.Context, hypervisor.VM, string, func(string)) (guestAgent, error) {
					return newFakeAgent(), nil
				},
				PlaceVM: func(pid int) error {
					placing <- pid
					<-release
					return tc.err
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			select {
			case pid := <-placing:
				if pid != 4242 {
					t.Errorf("PlaceVM got pid %d, want the VM's 4242", pid)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("PlaceVM was not called")
			}
			ready := make(chan error, 1)
			go func() { ready <- s.waitReady(context.Background()) }()
			select {
			case err := <-ready:
				t.Fatalf("the pod was ready (%v) while its VM was being placed", err)
			case <-time.After(200 * time.Millisecond):
			}
			close(release)
			if err := <-ready; err != nil {
				t.Fatalf("the pod did not start: %v", err)
			}
			if s.Info().VMPid != 4242 {
				t.Errorf("pod info: VM pid %d, want 4242", s.Info().VMPid)
			}
		})
	}
}
