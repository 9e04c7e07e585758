package factory

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
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
