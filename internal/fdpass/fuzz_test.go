package fdpass

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzReceive sends the daemon's stdio socket an arbitrary header with 0 to MaxFiles+1
// descriptors. Whatever arrives, the server answers one line and keeps the descriptors only
// when it said "ok" (a valid header whose count matches): they are then claimable exactly
// once, and nothing it refused stays open.
func FuzzReceive(f *testing.F) {
	f.Add([]byte(`{"token":"t","count":1}`), uint8(1))
	f.Add([]byte(`{"token":"t","count":3}`), uint8(3))
	f.Add([]byte(`{"token":"t","count":4}`), uint8(4))
	f.Add([]byte(`{"token":"","count":0}`), uint8(0))
	f.Add([]byte(`{"token":"t","count":2}`), uint8(1))
	f.Add([]byte(`not json`), uint8(2))
	f.Add([]byte{}, uint8(1))
	sock := filepath.Join(f.TempDir(), "s.sock")
	srv, err := Listen(sock)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, hdr []byte, nfds uint8) {
		n := int(nfds % (MaxFiles + 2))
		before := openFDs(t)
		var fds []int
		for i := 0; i < n; i++ {
			fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
		}
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		var oob []byte
		if n > 0 {
			oob = unix.UnixRights(fds...)
		}
		if len(hdr) == 0 && n == 0 {
			hdr = []byte{0} // a zero-length datagram on a stream socket sends nothing
		}
		if _, _, err := conn.(*net.UnixConn).WriteMsgUnix(hdr, oob, nil); err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		ack := make([]byte, 256)
		m, err := conn.Read(ack)
		conn.Close()
		if err != nil {
			t.Fatalf("no answer from the server: %v", err)
		}
		if string(ack[:m]) == "ok\n" {
			h := parseHeaderForTest(t, hdr)
			files, err := srv.Take(h.Token)
			if err != nil {
				t.Fatalf("server said ok but holds nothing for %q: %v", h.Token, err)
			}
			if len(files) != h.Count || len(files) != n {
				t.Fatalf("server parked %d descriptors, header said %d, sent %d", len(files), h.Count, n)
			}
			for _, f := range files {
				f.Close()
			}
			if _, err := srv.Take(h.Token); err == nil {
				t.Fatal("descriptors claimed twice")
			}
		}
		// What the server refused or kept was closed above; its end of the connection
		// closes just after the answer, so poll for it with a deadline.
		for deadline := time.Now().Add(10 * time.Second); openFDs(t) > before; {
			if time.Now().After(deadline) {
				t.Fatalf("descriptors leaked: %d open before, %d after", before, openFDs(t))
			}
			time.Sleep(time.Millisecond)
		}
	})
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func parseHeaderForTest(t *testing.T, b []byte) header {
	var h header
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("server accepted a header that does not parse: %q", b)
	}
	return h
}
