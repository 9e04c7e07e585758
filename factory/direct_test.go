package factory

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
)

// fakeLauncher records the configs it is asked to boot.
type fakeLauncher struct {
	got []hypervisor.Config
}

func (f *fakeLauncher) Launch(_ context.Context, cfg hypervisor.Config) (hypervisor.VM, error) {
	f.got = append(f.got, cfg)
	return nil, nil
}

func TestDirectRequestToConfig(t *testing.T) {
	base := hypervisor.Config{
		ID: "ignored", Dir: "/ignored", ShareDir: "/ignored",
		Kernel: "/k", Initrd: "/i", Machine: hypervisor.MachineQ35, Accel: hypervisor.AccelTCG,
		CPUs: 1, MemoryMiB: 128, MaxCPUs: 4, MaxMemoryMiB: 1024,
		KernelParams: []string{"base=1"},
	}
	tests := []struct {
		name string
		req  Request
		want hypervisor.Config
	}{
		{
			name: "defaults from the factory",
			req:  Request{ID: "p1", Dir: "/d", ShareDir: "/s"},
			want: func() hypervisor.Config {
				c := base
				c.ID, c.Dir, c.ShareDir = "p1", "/d", "/s"
				return c
			}(),
		},
		{
			name: "size and params from the request",
			req:  Request{ID: "p2", Dir: "/d", ShareDir: "/s", CPUs: 2, MemoryMiB: 512, KernelParams: []string{"req=1"}},
			want: func() hypervisor.Config {
				c := base
				c.ID, c.Dir, c.ShareDir, c.CPUs, c.MemoryMiB = "p2", "/d", "/s", 2, 512
				c.KernelParams = []string{"base=1", "req=1"}
				return c
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &fakeLauncher{}
			d := NewDirect(l, base)
			if _, err := d.GetVM(context.Background(), tt.req); err != nil {
				t.Fatal(err)
			}
			got := l.got[0]
			if !slices.Equal(got.KernelParams, tt.want.KernelParams) {
				t.Errorf("kernel params %q, want %q", got.KernelParams, tt.want.KernelParams)
			}
			got.KernelParams, tt.want.KernelParams = nil, nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("config\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if !slices.Equal(base.KernelParams, []string{"base=1"}) {
		t.Errorf("the factory's base params were modified: %q", base.KernelParams)
	}
}

func TestDirectRejects(t *testing.T) {
	l := &fakeLauncher{}
	d := NewDirect(l, hypervisor.Config{})
	for _, req := range []Request{
		{Dir: "/d", ShareDir: "/s"},
		{ID: "p", ShareDir: "/s"},
		{ID: "p", Dir: "/d"},
		{ID: "p", Dir: "/d", ShareDir: "/s", CPUs: -1},
	} {
		if _, err := d.GetVM(context.Background(), req); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v: %v, want ErrInvalidArgument", req, err)
		}
	}
	if d.Name() != KindDirect {
		t.Errorf("Name() = %q", d.Name())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetVM(context.Background(), Request{ID: "p", Dir: "/d", ShareDir: "/s"}); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	if len(l.got) != 0 {
		t.Errorf("launcher called for invalid requests: %+v", l.got)
	}
}

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
