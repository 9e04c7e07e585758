package poddaemon

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/supervisor"
)

// A daemon that cannot serve its pod (here: its API socket's path is taken) says why to
// the runv that started it, and its VM, whose boot began before the sockets were made,
// goes, with the pod's directory.
func TestServeThatCannotListenEndsItsVM(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pod")
	if err := os.MkdirAll(filepath.Join(dir, podapi.APISocket, "taken"), 0o700); err != nil {
		t.Fatal(err)
	}
	vm := &unreachableVM{done: make(chan struct{})}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = Serve(ctx, supervisor.Config{PodID: "p", Dir: dir, Factory: oneVM{vm}}, w)
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Serve = %v, want the listen error", err)
	}
	said, _ := io.ReadAll(r)
	if !strings.HasPrefix(string(said), "error: ") || !strings.Contains(string(said), podapi.APISocket) {
		t.Errorf("the starter was told %q, want the error naming %s", said, podapi.APISocket)
	}
	if !vm.wasKilled() {
		t.Error("the VM whose boot had begun is left running")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pod directory is left: %v", err)
	}
}

// oneVM hands out its VM.
type oneVM struct{ vm hypervisor.VM }

func (f oneVM) GetVM(context.Context, factory.Request) (hypervisor.VM, error) { return f.vm, nil }
func (oneVM) Name() string                                                    { return "test" }
func (oneVM) Close() error                                                    { return nil }

// unreachableVM is a VM whose agent cannot be reached: the boot kills it.
type unreachableVM struct {
	mu     sync.Mutex
	killed bool
	done   chan struct{}
}

func (v *unreachableVM) ID() string { return "vm" }
func (v *unreachableVM) Pid() int   { return 0 }
func (v *unreachableVM) Channels(context.Context) (*hypervisor.Channels, error) {
	return nil, errors.New("no agent in a test VM")
}
func (v *unreachableVM) Done() <-chan struct{}          { return v.done }
func (v *unreachableVM) Shutdown(context.Context) error { return v.Kill() }
func (v *unreachableVM) ConsoleLog() string             { return "" }
func (v *unreachableVM) Accel() string                  { return hypervisor.AccelTCG }
func (v *unreachableVM) Restored() bool                 { return false }
func (v *unreachableVM) Grown() bool                    { return false }
func (v *unreachableVM) Kill() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.killed {
		v.killed = true
		close(v.done)
	}
	return nil
}

func (v *unreachableVM) wasKilled() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.killed
}
