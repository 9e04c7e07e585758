package qemu

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The template's device state arrives on a socket: what a sender writes and closes is the
// state file; more than the limit, a sender that never comes or never ends is an error
// that leaves no state file and no socket.
func TestReceiveState(t *testing.T) {
	const limit = 1 << 10
	tests := []struct {
		name    string
		send    []byte // nil: nobody connects
		hold    bool   // the sender keeps the connection open
		wantErr string
	}{
		{name: "whole stream", send: bytes.Repeat([]byte("d"), limit)},
		{name: "empty stream", send: []byte{}},
		{name: "over the limit", send: bytes.Repeat([]byte("d"), limit+1), wantErr: "larger than"},
		{name: "nobody connects", wantErr: "did not end"},
		{name: "stream never ends", send: []byte("abc"), hold: true, wantErr: "did not end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sock, state := filepath.Join(dir, migrateSocket), filepath.Join(dir, "state")
			r, err := receiveState(sock, state, limit)
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("socket %v, mode %v: want 0600", err, fi.Mode())
			}
			if tt.send != nil {
				c, err := net.Dial("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.Write(tt.send); err != nil {
					t.Fatal(err)
				}
				if !tt.hold {
					c.Close()
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err = r.wait(ctx)
			r.close(err != nil)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("wait: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("wait: %v, want an error with %q", err, tt.wantErr)
			}
			got, rerr := os.ReadFile(state)
			if tt.wantErr == "" && !bytes.Equal(got, tt.send) {
				t.Errorf("state file holds %d bytes (%v), want %d", len(got), rerr, len(tt.send))
			}
			if tt.wantErr != "" && !errors.Is(rerr, os.ErrNotExist) {
				t.Errorf("state file left after a failure: %v", rerr)
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left: %v", err)
			}
		})
	}
}

// A state file is never overwritten: clones may be loading it.
func TestReceiveStateRefusesAnExistingFile(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.WriteFile(state, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := receiveState(filepath.Join(dir, migrateSocket), state, 1<<10); err == nil {
		t.Fatal("receiveState over an existing state file succeeded")
	}
	if b, _ := os.ReadFile(state); string(b) != "old" {
		t.Errorf("existing state file changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, migrateSocket)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left: %v", err)
	}
}
