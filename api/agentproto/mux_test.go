package agentproto

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/runv-project/runv/internal/leakcheck"
)

type connPair func(t *testing.T) (net.Conn, net.Conn)

func pipePair(t *testing.T) (net.Conn, net.Conn) { return net.Pipe() }

// socketPair is the closest stand-in for a virtio-serial port: a kernel byte stream with
// its own buffering and short reads.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0], "a"), conn(fds[1], "b")
}

var pairs = []struct {
	name string
	make connPair
}{
	{"pipe", pipePair},
	{"socketpair", socketPair},
}

func forPairs(t *testing.T, f func(t *testing.T, a, b *Mux)) {
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			leakcheck.Goroutines(t)
			ca, cb := p.make(t)
			a, b := NewMux(ca, t.Logf), NewMux(cb, t.Logf)
			t.Cleanup(func() { a.Close(); b.Close() })
			f(t, a, b)
		})
	}
}

func mustOpen(t *testing.T, m *Mux, seq uint64) *Stream {
	t.Helper()
	s, err := m.Open(seq)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// openBoth opens seq on both muxes.
func openBoth(t *testing.T, a, b *Mux, seq uint64) (*Stream, *Stream) {
	t.Helper()
	return mustOpen(t, a, seq), mustOpen(t, b, seq)
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sendAndClose writes data to s and ends the direction, reporting on the returned channel.
func sendAndClose(s *Stream, data []byte) <-chan error {
	ch := make(chan error, 1)
	go func() {
		if _, err := s.Write(data); err != nil {
			ch <- err
			return
		}
		ch <- s.CloseWrite()
	}()
	return ch
}

// readAllSum reads s to EOF and reports the sha256 and length of what it read.
type sumResult struct {
	sum [32]byte
	n   int64
	err error
}

func readAllSum(s io.Reader) <-chan sumResult {
	ch := make(chan sumResult, 1)
	go func() {
		h := sha256.New()
		n, err := io.Copy(h, s)
		var r sumResult
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		ch <- r
	}()
	return ch
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestMuxBulkBothDirections(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		sa, sb := openBoth(t, a, b, 1)
		ab, ba := randomBytes(t, 1<<20), randomBytes(t, 1<<20+12345)
		wab, wba := sendAndClose(sa, ab), sendAndClose(sb, ba)
		rab, rba := readAllSum(sb), readAllSum(sa)
		for _, c := range []struct {
			name string
			r    <-chan sumResult
			want []byte
		}{{"a→b", rab, ab}, {"b→a", rba, ba}} {
			got := wait(t, c.r, c.name)
			if got.err != nil || got.n != int64(len(c.want)) || got.sum != sha256.Sum256(c.want) {
				t.Fatalf("%s: read %d bytes, err %v, sum match %v; want %d bytes", c.name, got.n, got.err, got.sum == sha256.Sum256(c.want), len(c.want))
			}
		}
		for _, w := range []<-chan error{wab, wba} {
			if err := wait(t, w, "writer"); err != nil {
				t.Fatal(err)
			}
		}
		// Both directions ended on the wire: neither side keeps routing state.
		for _, m := range []*Mux{a, b} {
			m.mu.Lock()
			n, g := len(m.streams), len(m.grants)
			m.mu.Unlock()
			if n != 0 || g != 0 {
				t.Errorf("finished stream still tracked: %d streams, %d pending grants", n, g)
			}
		}
	})
}

func TestMuxManyConcurrentStreams(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		const streams = 64
		var wg sync.WaitGroup
		errs := make(chan error, 2*streams)
		for i := range streams {
			seq := uint64(i + 1)
			sa, sb := openBoth(t, a, b, seq)
			data := randomBytes(t, 50_000+i*1000)
			wg.Add(2)
			go func() {
				defer wg.Done()
				if err := <-sendAndClose(sa, data); err != nil {
					errs <- fmt.Errorf("stream %d write: %w", seq, err)
				}
			}()
			go func() {
				defer wg.Done()
				got, err := io.ReadAll(sb)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("stream %d: read %d/%d bytes, err %v", seq, len(got), len(data), err)
				}
				sb.CloseWrite()
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		wait(t, done, "all streams")
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestMuxSlowConsumerDoesNotStallOthers(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		slowA, slowB := openBoth(t, a, b, 1)
		fastA, fastB := openBoth(t, a, b, 2)

		slowData := randomBytes(t, 3*InitialWindow)
		slowW := sendAndClose(slowA, slowData)
		// The slow writer exhausts its window and then waits for credit.
		deadline := time.Now().Add(10 * time.Second)
		for {
			a.mu.Lock()
			credit := slowA.sendCredit
			a.mu.Unlock()
			if credit == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("slow writer never exhausted its credit")
			}
			time.Sleep(time.Millisecond)
		}

		fastData := randomBytes(t, 4<<20)
		fastW, fastR := sendAndClose(fastA, fastData), readAllSum(fastB)
		if got := wait(t, fastR, "fast stream"); got.err != nil || got.sum != sha256.Sum256(fastData) {
			t.Fatalf("fast stream: %d bytes, err %v", got.n, got.err)
		}
		if err := wait(t, fastW, "fast writer"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-slowW:
			t.Fatalf("slow writer finished without a reader (err %v): credit not enforced", err)
		default:
		}
		b.mu.Lock()
		buffered := len(slowB.buf) - slowB.off
		b.mu.Unlock()
		if buffered != InitialWindow {
			t.Errorf("slow stream buffers %d bytes, want exactly the window %d", buffered, InitialWindow)
		}
		if got := wait(t, readAllSum(slowB), "slow stream"); got.err != nil || got.sum != sha256.Sum256(slowData) {
			t.Fatalf("slow stream: %d bytes, err %v", got.n, got.err)
		}
		if err := wait(t, slowW, "slow writer"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestMuxCloseDiscardsAndCredits(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		sa, sb := openBoth(t, a, b, 7)
		first := []byte("read before close")
		if _, err := sa.Write(first); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(first))
		if _, err := io.ReadFull(sb, buf); err != nil || !bytes.Equal(buf, first) {
			t.Fatalf("read %q, %v", buf, err)
		}
		// Some unread data is buffered when the reader gives up.
		if _, err := sa.Write(randomBytes(t, 1000)); err != nil {
			t.Fatal(err)
		}
		if err := sb.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := sb.Read(buf); !errors.Is(err, ErrStreamClosed) {
			t.Fatalf("Read after Close: %v, want ErrStreamClosed", err)
		}
		// Far more than a window: only credited-back discards let this finish.
		if err := wait(t, sendAndClose(sa, randomBytes(t, 10*InitialWindow)), "writer to a closed reader"); err != nil {
			t.Fatal(err)
		}
		// The other direction is unaffected by the reader closing.
		reply := sendAndClose(sb, []byte("still talking"))
		got, err := io.ReadAll(sa)
		if err != nil || string(got) != "still talking" {
			t.Fatalf("reverse direction: %q, %v", got, err)
		}
		if err := wait(t, reply, "reply"); err != nil {
			t.Fatal(err)
		}
		if a.Err() != nil || b.Err() != nil {
			t.Fatalf("mux failed: %v / %v", a.Err(), b.Err())
		}
	})
}

func TestMuxEOFSemantics(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		sa, sb := openBoth(t, a, b, 3)
		if _, err := sa.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := sa.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if err := sa.CloseWrite(); err != nil {
			t.Fatalf("second CloseWrite: %v", err)
		}
		if _, err := sa.Write([]byte("x")); !errors.Is(err, ErrStreamClosed) {
			t.Fatalf("Write after CloseWrite: %v, want ErrStreamClosed", err)
		}
		if n, err := sa.Write(nil); n != 0 || err != nil {
			t.Fatalf("empty Write after CloseWrite: %d, %v (an empty write sends nothing)", n, err)
		}
		got, err := io.ReadAll(sb)
		if err != nil || string(got) != "hello" {
			t.Fatalf("read %q, %v", got, err)
		}
		if n, err := sb.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("Read after EOF: %d, %v; want io.EOF again", n, err)
		}
		// Half close: b can still send after a ended its direction.
		if err := <-sendAndClose(sb, []byte("world")); err != nil {
			t.Fatal(err)
		}
		got, err = io.ReadAll(sa)
		if err != nil || string(got) != "world" {
			t.Fatalf("reverse read %q, %v", got, err)
		}
		// An empty Write must not be mistaken for EOF.
		sc, sd := openBoth(t, a, b, 4)
		if n, err := sc.Write(nil); n != 0 || err != nil {
			t.Fatalf("empty write: %d, %v", n, err)
		}
		if _, err := sc.Write([]byte("after empty")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := sd.Read(buf)
		if err != nil || string(buf[:n]) != "after empty" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
	})
}

func TestMuxOpenErrors(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		for _, seq := range []uint64{0, WindowUpdateBit, WindowUpdateBit | 5} {
			if _, err := a.Open(seq); err == nil {
				t.Errorf("Open(%#x) succeeded", seq)
			}
		}
		mustOpen(t, a, 9)
		if _, err := a.Open(9); err == nil {
			t.Error("second Open(9) succeeded")
		}
		a.Close()
		if _, err := a.Open(10); !errors.Is(err, ErrMuxClosed) {
			t.Errorf("Open after Close: %v, want ErrMuxClosed", err)
		}
	})
}

func TestMuxCloseFailsWaiters(t *testing.T) {
	forPairs(t, func(t *testing.T, a, b *Mux) {
		sa, sb := openBoth(t, a, b, 1)
		reader := make(chan error, 1)
		go func() { _, err := sb.Read(make([]byte, 1)); reader <- err }()
		// A writer blocked on credit (nobody reads sb beyond one byte).
		writer := sendAndClose(sa, randomBytes(t, 2*InitialWindow))
		deadline := time.Now().Add(10 * time.Second)
		for {
			a.mu.Lock()
			idle := sa.sendCredit == 0 && !sa.inflight
			a.mu.Unlock()
			if idle {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("writer never ran out of credit")
			}
			time.Sleep(time.Millisecond)
		}
		if err := wait(t, reader, "reader"); err != nil {
			t.Fatal(err)
		}
		a.Close()
		if err := wait(t, writer, "blocked writer"); !errors.Is(err, ErrMuxClosed) {
			t.Fatalf("blocked writer: %v, want ErrMuxClosed", err)
		}
		wait(t, b.Done(), "peer mux to notice")
		if err := b.Err(); !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("peer error %v, want ErrPeerClosed", err)
		}
		// The peer still delivers what it buffered before reporting the failure.
		n, err := io.Copy(io.Discard, sb)
		if n == 0 || !errors.Is(err, ErrPeerClosed) || errors.Is(err, io.EOF) {
			t.Fatalf("drain after failure: %d bytes, %v", n, err)
		}
	})
}

// rawPeer is a hand-driven peer: the test writes raw bytes, and every frame the mux sends
// is collected.
type rawPeer struct {
	conn   net.Conn
	frames chan StreamFrame
}

func newRawPeer(t *testing.T) (*Mux, *rawPeer) {
	t.Helper()
	leakcheck.Goroutines(t)
	c1, c2 := net.Pipe()
	m := NewMux(c1, t.Logf)
	p := &rawPeer{conn: c2, frames: make(chan StreamFrame, 1024)}
	go func() {
		defer close(p.frames)
		for {
			f, err := ReadStream(c2)
			if err != nil {
				return
			}
			select {
			case p.frames <- f:
			default: // the test did not ask for them
			}
		}
	}()
	t.Cleanup(func() { m.Close(); c2.Close() })
	return m, p
}

func (p *rawPeer) write(t *testing.T, b []byte) {
	t.Helper()
	// A write may fail once the mux hung up on us mid-frame: that is the point of some tests.
	p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	p.conn.Write(b)
}

func header(seq uint64, n uint32) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, seq)
	binary.BigEndian.PutUint32(b[8:], n)
	return b
}

func frame(seq uint64, data []byte) []byte { return append(header(seq, uint32(len(data))), data...) }

func TestMuxProtocolErrors(t *testing.T) {
	update := func(seq uint64, n uint32) []byte {
		f := WindowUpdate(seq, n)
		return frame(f.Seq, f.Data)
	}
	full := bytes.Repeat([]byte{'x'}, MaxStreamPayload)
	var overCredit []byte
	for range InitialWindow / MaxStreamPayload {
		overCredit = append(overCredit, frame(1, full)...)
	}
	overCredit = append(overCredit, frame(1, []byte{1})...)

	cases := []struct {
		name  string
		input []byte
		want  string
	}{
		{"data beyond credit", overCredit, "exceed"},
		{"credit beyond window", update(1, 1), "beyond"},
		{"second EOF", append(frame(1, nil), frame(1, nil)...), "second EOF"},
		{"data after EOF", append(frame(1, nil), frame(1, []byte("late"))...), "after its EOF"},
		{"oversized frame", header(1, 0xffffffff), "cap"},
		{"oversized frame unknown seq", header(12345, MaxStreamPayload+1), "cap"},
		{"seq 0", frame(0, []byte("x")), "reserved"},
		{"short window update", frame(1|WindowUpdateBit, []byte{1, 2}), "want 4"},
		// A frame cut short by the peer going away is a dead peer, not a confused one.
		{"truncated frame", append(header(1, 100), 1, 2, 3), "middle of a frame"},
		{"truncated header", header(1, 100)[:5], "middle of a frame"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, p := newRawPeer(t)
			s := mustOpen(t, m, 1)
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			p.write(t, c.input)
			wantErr := ErrProtocol
			if strings.HasPrefix(c.name, "truncated") {
				// An incomplete frame followed by silence is no error by itself: only
				// the peer hanging up exposes it.
				p.conn.Close()
				wantErr = ErrPeerClosed
			}
			wait(t, m.Done(), "mux to fail")
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			err := m.Err()
			if !errors.Is(err, wantErr) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("mux error %v, want %v mentioning %q", err, wantErr, c.want)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(len(c.input))+4<<20 {
				t.Errorf("mux allocated %d bytes for %d bytes of input", grew, len(c.input))
			}
			if _, err := s.Write([]byte("x")); !errors.Is(err, wantErr) {
				t.Errorf("Write after failure: %v", err)
			}
			// Whatever was delivered before the bad frame, Read ends in the mux error,
			// unless the stream had already ended cleanly.
			_, err = io.Copy(io.Discard, s)
			if strings.Contains(c.name, "EOF") {
				if err != nil {
					t.Errorf("Read of a stream that ended before the failure: %v, want clean EOF", err)
				}
			} else if !errors.Is(err, wantErr) {
				t.Errorf("Read after failure: %v", err)
			}
		})
	}
}

func TestMuxUnknownStreams(t *testing.T) {
	m, p := newRawPeer(t)
	var logs atomic.Int32
	m.logf = func(format string, args ...any) { logs.Add(1); t.Logf(format, args...) }
	s := mustOpen(t, m, 1)
	for i := range 1000 {
		p.write(t, frame(uint64(1000+i), []byte("stale data")))
		p.write(t, frame(uint64(1000+i)|WindowUpdateBit, []byte{0, 0, 0, 9}))
	}
	p.write(t, frame(1, []byte("live")))
	p.write(t, frame(1, nil))
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "live" {
		t.Fatalf("read %q, %v", got, err)
	}
	if n := logs.Load(); n != 1 {
		t.Errorf("%d log lines for 1000 stale frames, want 1 (rate-limited)", n)
	}
	m.mu.Lock()
	n := len(m.streams)
	m.mu.Unlock()
	if n != 1 {
		t.Errorf("%d streams tracked, want only the one opened", n)
	}
	if err := m.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestMuxWindowUpdates(t *testing.T) {
	m, p := newRawPeer(t)
	s := mustOpen(t, m, 5)
	// The peer fills the window exactly: legal.
	full := bytes.Repeat([]byte{'y'}, MaxStreamPayload)
	for range InitialWindow / MaxStreamPayload {
		p.write(t, frame(5, full))
	}
	// Reading a batch grants exactly what was consumed.
	buf := make([]byte, creditBatch)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	f := wait(t, p.frames, "window update")
	if !f.IsWindowUpdate() || f.Stream() != 5 || f.Credit() != creditBatch {
		t.Fatalf("got frame seq %#x credit %d, want a window update of %d on 5", f.Seq, f.Credit(), creditBatch)
	}
	// The granted credit is usable again, and no more than that.
	p.write(t, frame(5, bytes.Repeat([]byte{'z'}, creditBatch)))
	p.write(t, frame(5, []byte{1}))
	wait(t, m.Done(), "over-credit failure")
	if !errors.Is(m.Err(), ErrProtocol) {
		t.Fatalf("err %v, want ErrProtocol", m.Err())
	}
}
