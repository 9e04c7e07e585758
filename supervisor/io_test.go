package supervisor

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/runv-project/runv/internal/fdpass"
)

// takeStdio hands out the descriptors a client parked in the order it sent them: the
// streams it has, then the stand-in's pidfd when the request says one follows.
func TestTakeStdioSplitsTheStandIn(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "stdio.sock")
	srv, err := fdpass.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, tc := range []struct {
		name                        string
		req                         StdioRequest
		stdin, stdout, stderr, self bool // which of the sent files each member must be
	}{
		{"all four", StdioRequest{HasStdin: true, HasStdout: true, HasStderr: true, HasStandIn: true}, true, true, true, true},
		{"output and stand-in", StdioRequest{HasStdout: true, HasStandIn: true}, false, true, false, true},
		{"streams only", StdioRequest{HasStdin: true, HasStderr: true}, true, false, true, false},
		{"stand-in only", StdioRequest{HasStandIn: true}, false, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each sent file is a pipe whose name says what it is meant to be.
			var sent []*os.File
			names := map[uint64]string{} // inode of the pipe → role
			for _, role := range []struct {
				name string
				on   bool
			}{{"stdin", tc.stdin}, {"stdout", tc.stdout}, {"stderr", tc.stderr}, {"stand-in", tc.self}} {
				if !role.on {
					continue
				}
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { r.Close(); w.Close() })
				st, _ := w.Stat()
				names[inode(st)] = role.name
				sent = append(sent, w)
			}
			req := tc.req
			req.Token = tc.name
			if err := fdpass.Send(sock, req.Token, sent); err != nil {
				t.Fatal(err)
			}
			h, standIn, err := takeStdio(srv, req)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			defer closeFile(standIn)
			check := func(role string, f *os.File, want bool) {
				t.Helper()
				if (f != nil) != want {
					t.Fatalf("%s present = %v, want %v", role, f != nil, want)
				}
				if f == nil {
					return
				}
				st, err := f.Stat()
				if err != nil {
					t.Fatal(err)
				}
				if got := names[inode(st)]; got != role {
					t.Fatalf("%s is the file sent as %q", role, got)
				}
			}
			check("stdin", asFile(h.Stdin), tc.stdin)
			check("stdout", asFile(h.Stdout), tc.stdout)
			check("stderr", asFile(h.Stderr), tc.stderr)
			check("stand-in", standIn, tc.self)
		})
	}
}

func inode(st os.FileInfo) uint64 { return st.Sys().(*syscall.Stat_t).Ino }

// asFile is the descriptor behind a stream takeStdio made (nil: none).
func asFile(stream any) *os.File {
	f, _ := stream.(*os.File)
	return f
}
