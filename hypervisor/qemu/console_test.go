package qemu

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// countingReader counts what was read from it, so a test can tell the drain kept reading.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestDrainConsole(t *testing.T) {
	const limit = 10
	for _, tc := range []struct {
		name, in, want string
		w              io.Writer
	}{
		{"shorter than the limit", "boot ok", "boot ok", nil},
		{"exactly the limit", "0123456789", "0123456789", nil},
		{"past the limit", strings.Repeat("x", 1000), strings.Repeat("x", limit) + consoleTruncated, nil},
		{"a full disk", strings.Repeat("y", 1000), "", failingWriter{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			w := tc.w
			if w == nil {
				w = &out
			}
			r := &countingReader{r: strings.NewReader(tc.in)}
			drainConsole(w, r, limit)
			if out.String() != tc.want {
				t.Errorf("console.log holds %q, want %q", out.String(), tc.want)
			}
			// Everything was read: QEMU's serial port never blocks on a full log.
			if r.n != len(tc.in) {
				t.Errorf("read %d of %d bytes: the guest's writes would block", r.n, len(tc.in))
			}
		})
	}
}
