package qemu

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"
)

// FuzzMonitorAnswer plays arbitrary bytes as QEMU's answer to query-status. A QEMU whose
// guest broke out is the attacker's process: whatever it sends, the command returns within
// its deadline with a status or an error, and never hangs the pod daemon.
func FuzzMonitorAnswer(f *testing.F) {
	f.Add([]byte(`{"return":{"status":"running","running":true}}` + "\n"))
	f.Add([]byte(`{"event":"STOP","timestamp":{"seconds":1,"microseconds":2}}` + "\n" + `{"return":{"status":"paused"}}` + "\n"))
	f.Add([]byte(`{"error":{"class":"GenericError","desc":"no"}}` + "\n"))
	f.Add([]byte(`{"return":"x"}` + "\n"))
	f.Add([]byte(`{"return":{"status":`))
	f.Add([]byte("\n\n\n"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		sock := fakeQEMU(t, func(c net.Conn, r *bufio.Reader) {
			c.Write([]byte(`{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":7},"package":""},"capabilities":[]}}` + "\n"))
			r.ReadString('\n') // qmp_capabilities
			c.Write([]byte(`{"return":{}}` + "\n"))
			r.ReadString('\n') // query-status
			c.Write(answer)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := dialQueued(sock)
		if err != nil {
			t.Fatal(err)
		}
		m := newMonitor(conn, make(chan struct{}))
		defer m.close()
		if err := m.handshake(ctx); err != nil {
			t.Fatalf("handshake with the fake QEMU: %v", err)
		}
		// A command that gets no answer ends at its own deadline: shorter than the test's.
		cctx, ccancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer ccancel()
		m.status(cctx)
		if ctx.Err() != nil {
			t.Fatal("query-status hung past its deadline")
		}
	})
}
