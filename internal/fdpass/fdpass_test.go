package fdpass

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
)

// listen serves a stdio socket for one test.
func listen(t *testing.T) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "stdio.sock")
	srv, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, sock
}

func TestPassAndTake(t *testing.T) {
	srv, sock := listen(t)

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := Send(sock, "tok", []*os.File{w}); err != nil {
		t.Fatalf("send: %v", err)
	}
	w.Close() // the daemon now holds the only write end

	files, err := srv.Take("tok")
	if err != nil {
		t.Fatalf("take: %v", err)
	}
	if len(files) != 1 {
		t.Fatalf("got %d files, want 1", len(files))
	}
	if _, err := files[0].Write([]byte("through the daemon")); err != nil {
		t.Fatal(err)
	}
	files[0].Close()
	got, _ := io.ReadAll(r)
	if string(got) != "through the daemon" {
		t.Fatalf("read %q", got)
	}
	if _, err := srv.Take("tok"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("second take: %v, want ErrInvalidArgument", err)
	}
}

func TestSendRefusesBadCounts(t *testing.T) {
	tests := []struct {
		name  string
		files int
	}{{"none", 0}, {"too many", MaxFiles + 1}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := make([]*os.File, tt.files)
			for i := range files {
				files[i] = os.Stdin
			}
			if err := Send("/nonexistent", "t", files); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestDuplicateTokenRefused(t *testing.T) {
	_, sock := listen(t)
	if err := Send(sock, "same", []*os.File{os.Stdin}); err != nil {
		t.Fatal(err)
	}
	if err := Send(sock, "same", []*os.File{os.Stdin}); err == nil {
		t.Fatal("second send under the same token succeeded")
	}
}

// TestPendingSetsCapped: a client that parks descriptor sets without claiming them fills
// the table up to MaxPending; the next set is refused as unavailable with the reason (its
// descriptors closed, not parked), and claiming one makes room again.
func TestPendingSetsCapped(t *testing.T) {
	srv, sock := listen(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for i := 0; i < MaxPending; i++ {
		if err := Send(sock, fmt.Sprint("set-", i), []*os.File{w}); err != nil {
			t.Fatalf("set %d of %d: %v", i+1, MaxPending, err)
		}
	}
	before := openFDs(t)
	err = Send(sock, "one-too-many", []*os.File{w})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), fmt.Sprint(MaxPending, " unclaimed descriptor sets")) {
		t.Fatalf("set %d: err = %v, want ErrUnavailable naming the cap of %d unclaimed sets", MaxPending+1, err, MaxPending)
	}
	if _, err := srv.Take("one-too-many"); err == nil {
		t.Fatal("the refused set was parked")
	}
	// The server closes the refused descriptor just after its answer.
	if !pollUntil(10*time.Second, func() bool { return openFDs(t) <= before }) {
		t.Fatalf("the refused descriptor stayed open: %d descriptors before, %d after", before, openFDs(t))
	}
	files, err := srv.Take("set-0")
	if err != nil {
		t.Fatal(err)
	}
	files[0].Close()
	if err := Send(sock, "after-a-claim", []*os.File{w}); err != nil {
		t.Fatalf("send after a set was claimed: %v", err)
	}
}

// pollUntil polls cond until it holds or the deadline passes.
func pollUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}
