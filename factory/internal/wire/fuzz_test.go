package wire

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
)

// socketPair returns two connected unix stream sockets.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// FuzzServeRequest plays arbitrary bytes as a request to the factory daemon (or a holder).
// The server answers exactly one JSON response; it runs the handler only for a request that
// decoded, and refuses anything else as invalid input.
func FuzzServeRequest(f *testing.F) {
	for _, r := range []Request{{Op: OpGet, ID: "p", Dir: "/d", ShareDir: "/d/share", CPUs: 1, MemoryMiB: 128},
		{Op: OpStatus, Wait: true, TimeoutMs: 5}, {Op: OpAdopt, Pid: 1}, {Op: "nonsense"}} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"op":"get","cpus":1e99}`))
	f.Add([]byte(`{"op":`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`"` + string(make([]byte, 100)) + `"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, cli := socketPair(t)
		defer cli.Close()
		handled := make(chan Request, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			ServeConn(srv, func(_ net.Conn, r Request) Response { handled <- r; return Response{} })
		}()
		go func() {
			cli.Write(data)
			cli.CloseWrite()
		}()
		cli.SetReadDeadline(time.Now().Add(20 * time.Second))
		var resp Response
		if err := json.NewDecoder(cli).Decode(&resp); err != nil {
			t.Fatalf("no JSON answer: %v", err)
		}
		<-done
		select {
		case <-handled:
			if resp.Error != "" {
				t.Fatalf("handled request answered with an error: %s", resp.Error)
			}
		default:
			if !errors.Is(resp.Err(), errdefs.ErrInvalidArgument) {
				t.Fatalf("unhandled request not refused as invalid: %+v", resp)
			}
		}
	})
}

// FuzzCallResponse plays arbitrary bytes as the answer of a factory daemon or holder. The
// caller returns within its deadline with a response or an error, never a response that
// carries an error.
func FuzzCallResponse(f *testing.F) {
	for _, r := range []Response{{VM: &VMInfo{ID: "v", Dir: "/d", QEMUPid: 2, HolderPid: 3}},
		{Error: "no", Code: 5}, {Status: &Status{Pid: 1, Pools: []PoolStatus{{Name: "p"}}}}} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"error":"x","code":99999}`))
	f.Add([]byte(`{"vm":null}`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte) {
		// A server of its own per input: one that misbehaves cannot wedge the next.
		sock := filepath.Join(dir, strconv.FormatInt(n.Add(1), 10)+".sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(sock)
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go io.Copy(io.Discard, c)
			c.Write(data)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := Call(ctx, sock, Request{Op: OpStatus})
		if ctx.Err() != nil {
			t.Fatal("call hung until its deadline")
		}
		if err == nil && resp.Error != "" {
			t.Fatalf("an answer carrying error %q returned as success", resp.Error)
		}
	})
}
