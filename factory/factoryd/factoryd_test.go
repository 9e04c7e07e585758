package factoryd

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/internal/wire"
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

// serve runs s on a socket in a temporary directory until the test ends.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "factory.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background(), ln); close(done) }()
	t.Cleanup(func() { ln.Close(); <-done })
	return sock
}

// A VM asked for on behalf of another process goes to the asker's child only.
func TestGetForChildChecksParentage(t *testing.T) {
	sock := serve(t, NewServer(nil))
	req := factory.Request{ID: "p", Dir: t.TempDir(), ShareDir: t.TempDir()}
	if _, err := Prefetch(context.Background(), sock, req, os.Getppid()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("get for our parent: %v, want a refusal (failed precondition)", err)
	}
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	// Past the check, a server without pools has no VM for anybody.
	if _, err := Prefetch(context.Background(), sock, req, child.Process.Pid); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("get for our child: %v, want unavailable (no pool)", err)
	}
}

// A pod daemon whose starter got no VM, said nothing, or is too slow asks its own factory;
// only its first request looks for the starter's VM.
func TestPrefetchedFallsBack(t *testing.T) {
	req := factory.Request{ID: "p", Dir: "/d", ShareDir: "/s", CPUs: 1, MemoryMiB: 128}
	for _, tt := range []struct {
		name    string
		starter func(w *os.File)
		ctx     func() (context.Context, context.CancelFunc)
	}{
		{"no VM", func(w *os.File) { WritePrefetched(w, req, wire.VMInfo{}, errors.New("pool empty")) }, nil},
		{"starter exited without a word", func(*os.File) {}, nil},
		{"garbage", func(w *os.File) { w.WriteString("{not json\n") }, nil},
		{"starter too slow", nil, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 10*time.Millisecond)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if tt.starter != nil {
				tt.starter(w)
				w.Close()
			}
			ctx, cancel := context.WithCancel(context.Background())
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			inner := &recordingFactory{}
			f := Prefetched(inner, r)
			for i := 0; i < 2; i++ {
				if _, err := f.GetVM(ctx, req); !errors.Is(err, errNoBoot) {
					t.Fatalf("GetVM %d: %v, want the inner factory's error", i, err)
				}
			}
			if len(inner.got) != 2 || !sameRequest(inner.got[0], req) {
				t.Errorf("inner factory got %+v, want the request twice", inner.got)
			}
		})
	}
}
