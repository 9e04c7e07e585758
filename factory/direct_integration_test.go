//go:build integration

package factory

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
)

// A real boot through the QEMU launcher: the VM comes up cold-booted and goes away.
func TestDirectBoots(t *testing.T) {
	qemutest.RequireVM(t)
	base := qemutest.Dir(t)
	req := Request{ID: "factory-direct", Dir: filepath.Join(base, "vm"), ShareDir: filepath.Join(base, "share"), MemoryMiB: 192}
	for _, d := range []string{req.Dir, req.ShareDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f := NewDirect(&qemu.Launcher{}, hypervisor.Config{
		Kernel: qemutest.Kernel(t),
		Initrd: qemutest.Initrd(t),
		Accel:  hypervisor.AccelTCG,
	})
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := f.GetVM(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if vm.ID() != req.ID || vm.Restored() {
		t.Errorf("vm %s restored=%v", vm.ID(), vm.Restored())
	}
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Done():
	default:
		t.Error("Done not closed after Kill")
	}
	if pids := qemutest.QEMUsFor(req.Dir); len(pids) > 0 {
		t.Errorf("qemu still running: %v", pids)
	}
}
