package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/internal/state"
)

// A pod daemon that lives but does not answer is an error, not a stopped container; one
// that is gone is stopped.
func TestLiveStateOfASilentDaemon(t *testing.T) {
	stateTimeout, daemonExitGrace = 200*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { stateTimeout, daemonExitGrace = 10*time.Second, 2*time.Second })
	podDir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(podDir, podapi.APISocket))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts, and says nothing
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, tt := range []struct {
		name    string
		daemon  state.Process
		wantErr bool
	}{
		{"daemon alive but silent", state.Self(), true},
		{"daemon gone", state.Process{Pid: 0x3fffffff}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &state.Container{ID: "c1", PodDir: podDir, Daemon: tt.daemon, Shim: state.Self()}
			st, err := liveState(rec)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "does not answer") {
					t.Fatalf("liveState = %s, %v; want an error saying the daemon does not answer, not a guess", st.Status, err)
				}
				return
			}
			if err != nil || st.Status != state.StatusStopped {
				t.Fatalf("liveState = %s, %v; want stopped", st.Status, err)
			}
		})
	}
}
