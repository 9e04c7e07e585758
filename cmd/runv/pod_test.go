package main

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/internal/fdpass"
	"github.com/runv-project/runv/internal/sockets"
)

// fakePodDaemon answers Exec as a pod daemon does, saying whether it watches the stand-in
// pidfd that came with the stdio (a daemon of an older runv does not), and records the
// WatchStandIn calls it gets.
type fakePodDaemon struct {
	podapi.UnimplementedPodServer
	stdio   *fdpass.Server
	watches bool

	mu        sync.Mutex
	watchedBy []string // processes handed over with WatchStandIn
}

func (d *fakePodDaemon) Exec(_ context.Context, r *podapi.ExecRequest) (*podapi.ExecResponse, error) {
	files, err := d.stdio.Take(r.Stdio.Token)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		f.Close()
	}
	return &podapi.ExecResponse{GuestPid: 7, StandInWatched: d.watches && r.Stdio.HasStandIn}, nil
}

func (d *fakePodDaemon) WatchStandIn(_ context.Context, r *podapi.StandInRequest) (*podapi.Empty, error) {
	files, err := d.stdio.Take(r.Token)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		f.Close()
	}
	d.mu.Lock()
	d.watchedBy = append(d.watchedBy, r.Process)
	d.mu.Unlock()
	return &podapi.Empty{}, nil
}

// startFakePodDaemon serves d in a pod directory and returns a connection to it.
func startFakePodDaemon(t *testing.T, d *fakePodDaemon) *podConn {
	t.Helper()
	dir := t.TempDir()
	var err error
	if d.stdio, err = fdpass.Listen(filepath.Join(dir, podapi.StdioSocket)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stdio.Close() })
	ln, err := sockets.Listen(filepath.Join(dir, podapi.APISocket))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	podapi.RegisterPodServer(g, d)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	pod, err := dialPod(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Close() })
	return pod
}

// A foreground exec's stand-in pidfd goes with its stdio; a pod daemon of an older runv
// (started before an upgrade) ignores it and says so, and the CLI hands it over with
// WatchStandIn as it did before, so the process is watched either way.
func TestForegroundExecStandInIsWatchedByOldAndNewDaemons(t *testing.T) {
	for _, tc := range []struct {
		name          string
		daemonWatches bool
		wantWatchCall bool
	}{
		{"daemon takes the pidfd with the stdio", true, false},
		{"daemon of an older runv", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakePodDaemon{watches: tc.daemonWatches}
			pod := startFakePodDaemon(t, d)
			p := &specs.Process{Args: []string{"true"}, Cwd: "/"}
			if err := execInPod(context.Background(), pod, "c1", "exec-1", p, nil, true); err != nil {
				t.Fatalf("execInPod: %v", err)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if got := len(d.watchedBy) == 1 && d.watchedBy[0] == "exec-1"; got != tc.wantWatchCall {
				t.Fatalf("WatchStandIn calls %v, want one for exec-1: %v", d.watchedBy, tc.wantWatchCall)
			}
		})
	}
}
