package factoryd

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
)

// recordingFactory records the requests it gets and boots nothing.
type recordingFactory struct{ got []factory.Request }

var errNoBoot = errors.New("recordingFactory boots nothing")

func (f *recordingFactory) GetVM(_ context.Context, req factory.Request) (hypervisor.VM, error) {
	f.got = append(f.got, req)
	return nil, errNoBoot
}
func (f *recordingFactory) Name() string { return "recording" }
func (f *recordingFactory) Close() error { return nil }

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
	fb := &recordingFactory{}
	c := &Client{Socket: filepath.Join(t.TempDir(), "none.sock"), Fallback: fb}
	req := factory.Request{ID: "p", Dir: "/d", ShareDir: "/s"}
	if _, err := c.GetVM(context.Background(), req); !errors.Is(err, errNoBoot) {
		t.Fatalf("GetVM without a factory daemon: %v, want the fallback's error", err)
	}
	if len(fb.got) != 1 || fb.got[0].ID != req.ID || c.Name() != factory.KindCache {
		t.Errorf("fallback got %+v; client named %s", fb.got, c.Name())
	}
}
