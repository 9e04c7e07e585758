package qemu

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A handshake with commands: all of them are written before QEMU's greeting is read (the
// fake QEMU reads the three commands before it says anything), their answers are decoded in
// order, a failed one is reported by name after all answers are in, and an event sent
// between answers reaches the watcher.
func TestMonitorHandshakeBatch(t *testing.T) {
	got := make(chan []string, 1)
	sock := fakeQEMU(t, func(c net.Conn, r *bufio.Reader) {
		var cmds []string
		for range 3 {
			l, err := r.ReadString('\n')
			if err != nil {
				break
			}
			cmds = append(cmds, strings.TrimSpace(l))
		}
		got <- cmds
		c.Write([]byte(`{"QMP":{"version":{},"capabilities":[]}}` + "\n" +
			`{"return":{}}` + "\n" +
			`{"return":{"status":"inmigrate","running":false}}` + "\n" +
			`{"event":"RESUME","timestamp":{"seconds":1,"microseconds":2}}` + "\n" +
			`{"error":{"class":"GenericError","desc":"no such uri"}}` + "\n"))
		r.ReadString('\n') // wait for the monitor to go
	})
	conn, err := dialQueued(sock)
	if err != nil {
		t.Fatal(err)
	}
	m := newMonitor(conn, make(chan struct{}))
	defer m.close()
	events, stop := m.watch()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st status
	err = m.handshake(ctx, qmpCall{command: "query-status", out: &st},
		qmpCall{command: "migrate-incoming", args: map[string]any{"uri": "fd:7"}})
	if err == nil || !strings.Contains(err.Error(), "qmp migrate-incoming: no such uri") {
		t.Errorf("handshake: %v, want migrate-incoming's error", err)
	}
	if st.Status != "inmigrate" {
		t.Errorf("query-status answered %+v, want inmigrate", st)
	}
	want := []string{`{"execute":"qmp_capabilities"}`, `{"execute":"query-status"}`,
		`{"execute":"migrate-incoming","arguments":{"uri":"fd:7"}}`}
	if cmds := <-got; strings.Join(cmds, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands written:\n%s\nwant:\n%s", strings.Join(cmds, "\n"), strings.Join(want, "\n"))
	}
	select {
	case ev := <-events:
		if ev.Event != "RESUME" {
			t.Errorf("event %+v, want RESUME", ev)
		}
	case <-ctx.Done():
		t.Error("the RESUME event did not reach the watcher")
	}
}

// A QEMU that exits before it greets fails the handshake as an early exit, at once.
func TestMonitorHandshakeExited(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	exited := make(chan struct{})
	close(exited)
	go server.Read(make([]byte, 100)) // takes the write; never answers
	m := newMonitor(client, exited)
	defer m.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.handshake(ctx); err != errExitedEarly {
		t.Errorf("handshake with an exited QEMU: %v, want errExitedEarly", err)
	}
}

// fakeQEMU listens on a socket in a temporary directory and runs serve on the first
// connection, as QEMU's QMP would answer it.
func fakeQEMU(t *testing.T, serve func(c net.Conn, r *bufio.Reader)) (sock string) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c, bufio.NewReader(c))
	}()
	return sock
}
