package agentproto

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"sync"
	"testing"
)

// scriptedConn plays back a hostile peer's bytes and swallows everything written to it.
type scriptedConn struct {
	r *bytes.Reader
}

func (c *scriptedConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *scriptedConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *scriptedConn) Close() error                { return nil }

// muxSeeds are small on purpose: the fuzzer minimises every new interesting input, and on a
// window-sized one that stalls it for a minute. The credit paths are covered by unit tests.
func muxSeeds() [][]byte {
	update := WindowUpdate(1, 100)
	return [][]byte{
		nil,
		frame(1, []byte("hello")),
		append(frame(1, []byte("hello")), frame(1, nil)...),
		append(frame(2, []byte("discarded")), frame(2, nil)...),
		append(frame(3, []byte("x")), frame(3, nil)...),
		frame(update.Seq, update.Data),
		frame(99, []byte("unknown")),
		header(1, 0xffffffff),
		append(frame(1, nil), frame(1, nil)...),
		frame(4, bytes.Repeat([]byte{'a'}, 1000)),
	}
}

// FuzzMuxInput feeds arbitrary bytes to a mux as its peer's traffic. Streams 1-4 are open:
// 1 is read, 2 is closed (discard path), 3 has our side ended (forget path), 4 is never
// read (its buffer must stay within the window). Whatever the input, the mux must neither
// panic nor hang, fail with a classified error, and never buffer beyond the window.
func FuzzMuxInput(f *testing.F) {
	for _, s := range muxSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := NewMux(&scriptedConn{r: bytes.NewReader(data)}, func(string, ...any) {})
		var streams [5]*Stream
		for seq := uint64(1); seq <= 4; seq++ {
			s, err := m.Open(seq)
			if err != nil {
				// The mux may already have consumed all the input and failed.
				if m.Err() == nil {
					t.Fatalf("open %d: %v", seq, err)
				}
				<-m.Done()
				return
			}
			streams[seq] = s
		}
		streams[2].Close()
		streams[3].CloseWrite()
		var wg sync.WaitGroup
		for _, s := range []*Stream{streams[1], streams[3]} {
			wg.Go(func() { io.Copy(io.Discard, s) })
		}
		<-m.Done()
		wg.Wait()
		err := m.Err()
		if !errors.Is(err, ErrPeerClosed) && !errors.Is(err, ErrProtocol) {
			t.Fatalf("unclassified mux error: %v", err)
		}
		m.mu.Lock()
		buffered := len(streams[4].buf) - streams[4].off
		m.mu.Unlock()
		if buffered > InitialWindow {
			t.Fatalf("stream 4 buffers %d bytes, beyond the %d-byte window", buffered, InitialWindow)
		}
	})
}

func FuzzReadStream(f *testing.F) {
	for _, s := range muxSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			fr, err := ReadStream(r)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unclassified error: %v", err)
				}
				return
			}
			if len(fr.Data) > MaxStreamPayload {
				t.Fatalf("frame of %d bytes passed the cap", len(fr.Data))
			}
			var buf bytes.Buffer
			if err := WriteStream(&buf, fr); err != nil {
				t.Fatalf("re-encode a frame that decoded: %v", err)
			}
			again, err := ReadStream(&buf)
			if err != nil || again.Seq != fr.Seq || !bytes.Equal(again.Data, fr.Data) {
				t.Fatalf("round trip: %+v, %v; want %+v", again, err, fr)
			}
		}
	})
}

func FuzzReadControl(f *testing.F) {
	seed := func(fr ControlFrame) []byte {
		var b bytes.Buffer
		if err := WriteControl(&b, fr); err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	ack, _ := Marshal(MsgAck, 7, VersionInfo{Version: Version, Agent: "fuzz"})
	exit, _ := Marshal(MsgProcessExit, 0, ProcessExit{Container: "c", Process: "init", ExitCode: 137, Signal: 9})
	f.Add(seed(ack))
	f.Add(seed(exit))
	f.Add(seed(ControlFrame{Type: MsgReady}))
	f.Add(seed(ControlFrame{Type: MsgError, ID: 3, Error: &RemoteError{Kind: KindNotFound, Message: "no such container"}}))
	f.Add([]byte{0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 10, 0, 0, 0, 10, '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			fr, err := ReadControl(r)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unclassified error: %v", err)
				}
				return
			}
			if fr.Type == MsgError && fr.Error == nil {
				t.Fatal("ERROR frame without an error passed")
			}
			// Re-encoding may legitimately grow a frame past the cap (JSON escaping).
			var buf bytes.Buffer
			if err := WriteControl(&buf, fr); err != nil {
				if errors.Is(err, ErrProtocol) {
					continue
				}
				t.Fatalf("re-encode: %v", err)
			}
			again, err := ReadControl(&buf)
			if err != nil {
				t.Fatalf("re-read of a re-encoded frame: %v", err)
			}
			var buf2 bytes.Buffer
			if err := WriteControl(&buf2, again); err != nil {
				t.Fatal(err)
			}
			third, err := ReadControl(&buf2)
			if err != nil || !reflect.DeepEqual(third, again) {
				t.Fatalf("encoding is not stable: %+v, %v; want %+v", third, err, again)
			}
		}
	})
}
