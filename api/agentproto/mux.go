package agentproto

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ErrMuxClosed is the error of a mux closed by its own side (Close), as opposed to a peer
// that went away (io.EOF inside) or misbehaved (ErrProtocol).
var ErrMuxClosed = errors.New("stream mux closed")

// ErrStreamClosed is returned by Read after Close, and by Write after CloseWrite.
var ErrStreamClosed = errors.New("stream closed")

// ErrPeerClosed is the mux's error when the peer closed the channel (for the host: the VM
// is gone). It deliberately does not wrap io.EOF: a stream cut short is not a clean EOF.
var ErrPeerClosed = errors.New("stream channel closed by peer")

// creditBatch is how much a reader consumes before it grants credit back without waiting for
// its buffer to drain: a quarter window keeps the sender busy while the reader catches up,
// without one window update per small read.
const creditBatch = InitialWindow / 4

// unknownLogInterval rate-limits the log line for data on streams nobody opened: a peer
// flooding stale seqs must not flood the log.
const unknownLogInterval = 5 * time.Second

// Mux multiplexes byte streams over the stream channel. Both ends run the same code: a
// stream is identified by its seq (allocated by the host), each direction has its own credit
// window, and a zero-length frame ends one direction.
//
// The peer is untrusted. Memory is bounded by what this side opened: at most InitialWindow
// buffered bytes per open stream, nothing per unknown seq. The reader goroutine never waits
// for a consumer or for the connection's write side, so a slow consumer or a peer that stops
// reading cannot wedge the frames of other streams.
type Mux struct {
	conn io.ReadWriteCloser
	logf func(format string, args ...any)

	// wmu serialises frame writes so frames never interleave on the wire.
	wmu sync.Mutex

	mu      sync.Mutex
	streams map[uint64]*Stream
	err     error
	done    chan struct{}
	// grants holds credit decided but not yet sent, per open stream. A separate goroutine
	// sends it so that neither the reader goroutine nor Close ever block on the connection.
	grants   map[uint64]uint32
	grantsCh chan struct{} // capacity 1: "grants is not empty"

	unknownLogged  time.Time
	unknownDropped int
}

// NewMux starts multiplexing over conn. logf may be nil. The mux owns conn: it closes it
// when it fails or is closed.
func NewMux(conn io.ReadWriteCloser, logf func(format string, args ...any)) *Mux {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	m := &Mux{
		conn:     conn,
		logf:     logf,
		streams:  make(map[uint64]*Stream),
		done:     make(chan struct{}),
		grants:   make(map[uint64]uint32),
		grantsCh: make(chan struct{}, 1),
	}
	go m.readLoop()
	go m.grantLoop()
	return m
}

// Done is closed once the mux failed or was closed.
func (m *Mux) Done() <-chan struct{} { return m.done }

// Err is nil while the mux runs, then why it stopped: ErrMuxClosed after Close, ErrPeerClosed
// when the peer closed the channel, ErrProtocol for a misbehaving peer, or
// the channel's own I/O error.
func (m *Mux) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close stops the mux and closes the connection. Streams fail with ErrMuxClosed (after
// their buffered data was read).
func (m *Mux) Close() error {
	m.fail(ErrMuxClosed)
	return nil
}

// Open registers stream seq so that the peer may send on it. A stream must be open before
// the peer sends its first frame: data for a seq that is not open is discarded.
func (m *Mux) Open(seq uint64) (*Stream, error) {
	if seq == 0 || seq&WindowUpdateBit != 0 {
		return nil, fmt.Errorf("open stream %#x: invalid seq", seq)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, fmt.Errorf("open stream %d: %w", seq, m.err)
	}
	if _, ok := m.streams[seq]; ok {
		return nil, fmt.Errorf("open stream %d: already open", seq)
	}
	s := &Stream{m: m, seq: seq, sendCredit: InitialWindow, recvAvail: InitialWindow}
	s.cond.L = &m.mu
	m.streams[seq] = s
	return s, nil
}

// fail records the first error, wakes every waiter and closes the connection (which
// unblocks the reader and any frame write in progress).
func (m *Mux) fail(err error) {
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return
	}
	m.err = err
	close(m.done)
	for _, s := range m.streams {
		s.cond.Broadcast()
	}
	m.mu.Unlock()
	m.conn.Close()
}

// eofReader remembers that the connection ended, so that a frame cut short by the peer
// going away (a VM dying mid-write) reads as ErrPeerClosed rather than as a protocol error.
type eofReader struct {
	r   io.Reader
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.eof = true
	}
	return n, err
}

func (m *Mux) readLoop() {
	r := &eofReader{r: m.conn}
	// dispatch copies what it keeps (push), so one payload buffer serves every frame.
	buf := make([]byte, MaxStreamPayload)
	for {
		f, err := readStream(r, buf)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				err = ErrPeerClosed
			case r.eof:
				err = fmt.Errorf("%w in the middle of a frame", ErrPeerClosed)
			case errors.Is(err, ErrProtocol):
			default:
				err = fmt.Errorf("read stream channel: %w", err)
			}
			m.fail(err)
			return
		}
		if err := m.dispatch(f); err != nil {
			m.fail(err)
			return
		}
	}
}

// dispatch handles one frame. It only touches memory under m.mu and never blocks: that is
// what keeps the reader goroutine live whatever the consumers do.
func (m *Mux) dispatch(f StreamFrame) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	seq := f.Stream()
	s := m.streams[seq]
	if f.IsWindowUpdate() {
		if s == nil {
			return nil // a stream we already forgot: the credit is of no use any more
		}
		credit := uint64(s.sendCredit) + uint64(f.Credit())
		if credit > InitialWindow {
			return fmt.Errorf("%w: window update on stream %d raises its credit to %d, beyond the %d-byte window", ErrProtocol, seq, credit, InitialWindow)
		}
		s.sendCredit = int(credit)
		s.cond.Broadcast()
		return nil
	}
	if s == nil {
		m.unknownDropped++
		if now := time.Now(); now.Sub(m.unknownLogged) >= unknownLogInterval {
			m.logf("stream mux: discarding frames for streams that are not open (stale streams): %d frames since the last report, latest for seq %d", m.unknownDropped, seq)
			m.unknownLogged, m.unknownDropped = now, 0
		}
		return nil
	}
	if s.peerEOF {
		if len(f.Data) == 0 {
			return fmt.Errorf("%w: second EOF on stream %d", ErrProtocol, seq)
		}
		return fmt.Errorf("%w: %d bytes on stream %d after its EOF", ErrProtocol, len(f.Data), seq)
	}
	if len(f.Data) == 0 {
		s.peerEOF = true
		s.cond.Broadcast()
		m.forgetIfDone(s)
		return nil
	}
	if len(f.Data) > s.recvAvail {
		return fmt.Errorf("%w: %d bytes on stream %d exceed the %d bytes of credit granted", ErrProtocol, len(f.Data), seq, s.recvAvail)
	}
	s.recvAvail -= len(f.Data)
	if s.rclosed {
		// Nobody reads: drop the bytes but hand the credit back, so the writer
		// behaves as if a reader consumed them and never blocks forever.
		m.grantLocked(s, len(f.Data))
		return nil
	}
	s.push(f.Data)
	s.cond.Broadcast()
	return nil
}

// grantLocked queues n bytes of credit for the peer on s.
func (m *Mux) grantLocked(s *Stream, n int) {
	if n == 0 {
		return
	}
	s.recvAvail += n
	m.grants[s.seq] += uint32(n)
	select {
	case m.grantsCh <- struct{}{}:
	default:
	}
}

// forgetIfDone drops s from the routing table once both directions ended on the wire: the
// peer sends nothing more on it, and we need no more credit. The Stream itself stays usable
// for reading what is buffered.
func (m *Mux) forgetIfDone(s *Stream) {
	if s.peerEOF && s.wclosed {
		m.forgetLocked(s)
	}
}

func (m *Mux) forgetLocked(s *Stream) {
	if m.streams[s.seq] == s {
		delete(m.streams, s.seq)
	}
	delete(m.grants, s.seq)
}

func (m *Mux) grantLoop() {
	var batch []StreamFrame
	for {
		select {
		case <-m.done:
			return
		case <-m.grantsCh:
		}
		m.mu.Lock()
		batch = batch[:0]
		for seq, n := range m.grants {
			batch = append(batch, WindowUpdate(seq, n))
			delete(m.grants, seq)
		}
		m.mu.Unlock()
		for _, f := range batch {
			if err := m.writeFrame(f); err != nil {
				return
			}
		}
	}
}

// writeFrame writes one frame under the writer lock. A failed write fails the mux: a
// partial frame leaves the peer out of sync.
func (m *Mux) writeFrame(f StreamFrame) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if err := m.Err(); err != nil {
		return err
	}
	if err := WriteStream(m.conn, f); err != nil {
		err = fmt.Errorf("write stream channel: %w", err)
		m.fail(err)
		return m.Err()
	}
	return nil
}

// Stream is one multiplexed stream: Read returns what the peer sends, Write sends to it.
// Reads may run concurrently with writes; concurrent Writes are serialised, each one's data
// stays contiguous.
type Stream struct {
	m   *Mux
	seq uint64

	// writeMu makes each Write's frames contiguous.
	writeMu sync.Mutex

	// Everything below is guarded by m.mu; cond (on m.mu) signals any change.
	cond       sync.Cond
	sendCredit int  // bytes we may still send
	inflight   bool // a data frame is being written outside m.mu
	wclosed    bool // CloseWrite called: no more data frames may start
	recvAvail  int  // bytes the peer may still send before we grant more
	consumed   int  // bytes read but not yet granted back
	buf        []byte
	off        int // buf[off:] is unread
	peerEOF    bool
	rclosed    bool
	reset      bool
}

// Seq is the stream's id.
func (s *Stream) Seq() uint64 { return s.seq }

// windowBufs recycles the buffers of streams whose reader fell behind by more than a frame:
// credit bounds what is unread to one window, so one window-sized buffer always suffices,
// and a stream that drains it hands it back instead of keeping it while idle. Without
// this, a guest writing without pause makes the host allocate twice what it streams.
var windowBufs = sync.Pool{New: func() any { return new([InitialWindow]byte) }}

func (s *Stream) push(p []byte) {
	if len(s.buf)+len(p) > cap(s.buf) && s.off > 0 {
		n := copy(s.buf, s.buf[s.off:])
		s.buf, s.off = s.buf[:n], 0
	}
	if len(s.buf)+len(p) > cap(s.buf) && len(s.buf)+len(p) <= InitialWindow {
		w := windowBufs.Get().(*[InitialWindow]byte)
		n := copy(w[:], s.buf)
		s.releaseBuf()
		s.buf = w[:n]
	}
	s.buf = append(s.buf, p...)
}

// releaseBuf drops the stream's buffer, recycling it if it came from windowBufs.
func (s *Stream) releaseBuf() {
	if cap(s.buf) == InitialWindow {
		windowBufs.Put((*[InitialWindow]byte)(s.buf[:InitialWindow]))
	}
	s.buf, s.off = nil, 0
}

// Read returns data the peer sent, io.EOF after the peer's EOF, or the mux's error once
// the buffered data is gone.
func (s *Stream) Read(p []byte) (int, error) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		switch {
		case s.reset:
			return 0, fmt.Errorf("read stream %d: %w", s.seq, ErrStreamClosed)
		case s.rclosed:
			return 0, fmt.Errorf("read stream %d: %w", s.seq, ErrStreamClosed)
		case s.off < len(s.buf):
			if len(p) == 0 {
				return 0, nil
			}
			n := copy(p, s.buf[s.off:])
			s.off += n
			s.consumed += n
			drained := s.off == len(s.buf)
			if drained {
				s.buf, s.off = s.buf[:0], 0
				if cap(s.buf) > MaxStreamPayload {
					// Do not keep up to a window's worth per idle stream.
					s.releaseBuf()
				}
			}
			if (s.consumed >= creditBatch || drained) && !s.peerEOF && m.err == nil {
				m.grantLocked(s, s.consumed)
				s.consumed = 0
			}
			return n, nil
		case s.peerEOF:
			s.releaseBuf()
			return 0, io.EOF
		case m.err != nil:
			return 0, fmt.Errorf("read stream %d: %w", s.seq, m.err)
		}
		s.cond.Wait()
	}
}

// Write sends p, waiting for credit as needed. It fails once the mux failed or CloseWrite
// was called.
func (s *Stream) Write(p []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	m := s.m
	written := 0
	for len(p) > 0 {
		m.mu.Lock()
		for s.sendCredit == 0 && !s.wclosed && !s.reset && m.err == nil {
			s.cond.Wait()
		}
		switch {
		case m.err != nil:
			err := m.err
			m.mu.Unlock()
			return written, fmt.Errorf("write stream %d: %w", s.seq, err)
		case s.wclosed || s.reset:
			m.mu.Unlock()
			return written, fmt.Errorf("write stream %d: %w", s.seq, ErrStreamClosed)
		}
		n := min(len(p), s.sendCredit, MaxStreamPayload)
		s.sendCredit -= n
		s.inflight = true
		m.mu.Unlock()

		err := m.writeFrame(StreamFrame{Seq: s.seq, Data: p[:n]})

		m.mu.Lock()
		s.inflight = false
		s.cond.Broadcast()
		m.mu.Unlock()
		if err != nil {
			return written, fmt.Errorf("write stream %d: %w", s.seq, err)
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// CloseWrite sends our EOF: the peer's Read returns io.EOF after the data written so far.
// Only the first call sends it. A Write blocked waiting for credit returns ErrStreamClosed.
func (s *Stream) CloseWrite() error {
	m := s.m
	m.mu.Lock()
	if s.wclosed || s.reset {
		m.mu.Unlock()
		return nil
	}
	s.wclosed = true
	s.cond.Broadcast()
	// The EOF frame must follow the last data frame on the wire.
	for s.inflight && m.err == nil {
		s.cond.Wait()
	}
	if err := m.err; err != nil {
		m.mu.Unlock()
		return fmt.Errorf("close stream %d: %w", s.seq, err)
	}
	m.mu.Unlock()
	err := m.writeFrame(StreamFrame{Seq: s.seq})
	m.mu.Lock()
	m.forgetIfDone(s)
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("close stream %d: %w", s.seq, err)
	}
	return nil
}

// Close stops reading: buffered data and everything the peer sends later is discarded, and
// credited back so that the peer's writer never blocks on us (a pipe nobody reads, minus the
// EPIPE). It does not end our direction: use CloseWrite for that.
func (s *Stream) Close() error {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.rclosed {
		return nil
	}
	s.rclosed = true
	unread := len(s.buf) - s.off
	s.buf, s.off = nil, 0
	if !s.peerEOF && !s.reset && m.err == nil {
		m.grantLocked(s, s.consumed+unread)
	}
	s.consumed = 0
	s.cond.Broadcast()
	return nil
}

// Reset forgets the stream at once without telling the peer: reads and writes fail with
// ErrStreamClosed, and frames that arrive later for its seq are discarded like those of a
// stream never opened. It is for streams the peer never opened (the command naming them
// failed); on a stream the peer is writing to, its writer would wait for credit forever.
func (s *Stream) Reset() {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	s.reset = true
	s.buf, s.off = nil, 0
	m.forgetLocked(s)
	s.cond.Broadcast()
}
