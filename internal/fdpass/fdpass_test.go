package fdpass

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/runv-project/runv/errdefs"
)

func TestPassAndTake(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "stdio.sock")
	srv, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

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
	sock := filepath.Join(t.TempDir(), "stdio.sock")
	srv, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := Send(sock, "same", []*os.File{os.Stdin}); err != nil {
		t.Fatal(err)
	}
	if err := Send(sock, "same", []*os.File{os.Stdin}); err == nil {
		t.Fatal("second send under the same token succeeded")
	}
}
