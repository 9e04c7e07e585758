package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version. Host and agent must agree exactly: the host refuses an
// agent that answers GetVersion with anything else.
//
// 2: ProcessList.Processes (optional command lines for `runv ps`).
// 3: SETUPNETWORK (the pod's interfaces, routes and neighbours).
// 4: PORTFORWARD and CLOSEFORWARD (TCP connections to the guest's loopback).
// 5: READY's payload (Ready: the agent's boot steps).
const Version = 5

// Port names the agent looks up under /sys/class/virtio-ports/*/name.
const (
	ControlPortName = "sh.hyper.channel.0"
	StreamPortName  = "sh.hyper.channel.1"
)

// PortsParam is the kernel parameter by which the host names the control and stream
// ports' device nodes under /dev, in that order ("runv.ports=vport0p1,vport0p2"): the
// agent then opens them without looking their names up. A node that is not there, or no
// such parameter, and the agent finds the ports by name.
const PortsParam = "runv.ports"

// ShareTag is the 9p mount tag of the pod's share (rootfs and volumes).
const ShareTag = "runvshare"

const (
	controlHeaderSize = 8
	streamHeaderSize  = 12

	// MaxControlFrame caps a whole control frame, header included. A peer announcing more is
	// broken or hostile; the frame is refused before anything of that size is allocated.
	MaxControlFrame = 1 << 20
	// MaxStreamPayload caps one stream frame's payload.
	MaxStreamPayload = 64 << 10
	// InitialWindow is the credit each side grants per stream before any window update: a
	// sender never has more than this many unacknowledged bytes in flight on one stream.
	InitialWindow = 256 << 10
	// WindowUpdateBit marks a stream frame as a window update (credit grant) for the stream
	// seq &^ WindowUpdateBit instead of data. Its payload is a u32 BE byte count.
	WindowUpdateBit uint64 = 1 << 63
)

// ErrProtocol classifies every malformed, oversized or out-of-order frame. A protocol error
// on either channel fails the pod: the peer cannot be trusted to be in sync any more.
var ErrProtocol = errors.New("agent protocol error")

// MsgType is the control frame's type field. Numbers follow hyperstart where the meaning is
// the same; new messages take numbers hyperstart never used.
type MsgType uint32

const (
	MsgGetVersion      MsgType = 0  // h→g, reply VersionInfo
	MsgStartPod        MsgType = 1  // h→g, Pod
	MsgDestroyPod      MsgType = 4  // h→g, ACKed, then the guest powers off
	MsgExecCmd         MsgType = 6  // h→g, ExecProcess, reply ProcessStarted
	MsgReady           MsgType = 8  // g→h, sent when the control port opens
	MsgAck             MsgType = 9  // g→h, reply to the command whose id it carries
	MsgError           MsgType = 10 // g→h, failure of the command whose id it carries
	MsgWinSize         MsgType = 11 // h→g, WindowSize
	MsgPing            MsgType = 12 // h→g
	MsgNewContainer    MsgType = 17 // h→g, Container, reply ProcessStarted (container created; started too with Container.Start)
	MsgOnlineCPUMem    MsgType = 19 // h→g, online hot-plugged CPUs and memory
	MsgSetupNetwork    MsgType = 20 // h→g, Network: the pod's whole network configuration
	MsgRemoveContainer MsgType = 22 // h→g, ContainerRef
	MsgProcessExit     MsgType = 23 // g→h event, ProcessExit (after the process's output reached EOF)
	MsgSignalProcess   MsgType = 24 // h→g, SignalProcess
	MsgStartContainer  MsgType = 26 // h→g, ContainerRef: run the created container's process
	MsgPauseContainer  MsgType = 27 // h→g, ContainerRef
	MsgResumeContainer MsgType = 28 // h→g, ContainerRef
	MsgListProcesses   MsgType = 29 // h→g, ContainerRef, reply ProcessList
	MsgUpdateContainer MsgType = 30 // h→g, UpdateContainer
	MsgStats           MsgType = 31 // h→g, ContainerRef, reply Stats
	MsgCloseStdin      MsgType = 32 // h→g, ProcessRef (for terminals, where no EOF frame exists)
	// MsgWarmup (h→g, before STARTPOD only, reply Warmup): run a throwaway container through
	// the whole container path, so that a pooled VM's first real container finds that
	// code translated (TCG) and paged in.
	MsgWarmup MsgType = 40
	// MsgPortForward (h→g, PortForward): connect to a port on the guest's loopback and
	// carry the connection on a stream; MsgCloseForward (h→g, ForwardRef) aborts one.
	MsgPortForward  MsgType = 41
	MsgCloseForward MsgType = 42
)

var msgNames = map[MsgType]string{
	MsgGetVersion: "GETVERSION", MsgStartPod: "STARTPOD", MsgDestroyPod: "DESTROYPOD",
	MsgExecCmd: "EXECCMD", MsgReady: "READY", MsgAck: "ACK", MsgError: "ERROR",
	MsgWinSize: "WINSIZE", MsgPing: "PING", MsgNewContainer: "NEWCONTAINER",
	MsgOnlineCPUMem: "ONLINECPUMEM", MsgSetupNetwork: "SETUPNETWORK", MsgRemoveContainer: "REMOVECONTAINER",
	MsgProcessExit: "PROCESSEXIT", MsgSignalProcess: "SIGNALPROCESS",
	MsgStartContainer: "STARTCONTAINER", MsgPauseContainer: "PAUSECONTAINER",
	MsgResumeContainer: "RESUMECONTAINER", MsgListProcesses: "LISTPROCESSES",
	MsgUpdateContainer: "UPDATECONTAINER", MsgStats: "STATS", MsgCloseStdin: "CLOSESTDIN",
	MsgWarmup: "WARMUP", MsgPortForward: "PORTFORWARD", MsgCloseForward: "CLOSEFORWARD",
}

func (t MsgType) String() string {
	if n, ok := msgNames[t]; ok {
		return n
	}
	return fmt.Sprintf("MSG(%d)", uint32(t))
}

// ControlFrame is one decoded control message. Commands carry a non-zero ID chosen by the
// host; the ACK or ERROR for a command carries the same ID. Unsolicited guest messages
// (READY, PROCESSEXIT) carry ID 0.
type ControlFrame struct {
	Type MsgType
	ID   uint64
	// Data is the command's payload, or an ACK's reply value.
	Data json.RawMessage
	// Error is set on MsgError frames only.
	Error *RemoteError
}

// envelope is the JSON body of every control frame.
type envelope struct {
	ID    uint64          `json:"id,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error *RemoteError    `json:"error,omitempty"`
}

// RemoteError is an error reported by the agent. Kind lets the host map it onto its own
// error classes (not-found, invalid, ...) without parsing messages.
type RemoteError struct {
	Kind    string `json:"kind,omitempty"`
	Message string `json:"message"`
}

func (e *RemoteError) Error() string { return e.Message }

// Error kinds the agent reports.
const (
	KindNotFound      = "not-found"
	KindAlreadyExists = "already-exists"
	KindInvalid       = "invalid"
	KindState         = "failed-precondition"
	KindNotExecutable = "not-executable" // the process's executable is missing or cannot run (exit 127/126)
)

// WriteControl encodes f as one frame. The write is a single call so that concurrent writers
// serialised by the caller's lock never interleave partial frames.
func WriteControl(w io.Writer, f ControlFrame) error {
	buf, err := appendEnvelope(make([]byte, controlHeaderSize, controlHeaderSize+64+len(f.Data)), f)
	if err != nil {
		return fmt.Errorf("encode %s: %w", f.Type, err)
	}
	total := len(buf)
	if total > MaxControlFrame {
		return fmt.Errorf("%w: %s frame of %d bytes exceeds the %d-byte cap", ErrProtocol, f.Type, total, MaxControlFrame)
	}
	binary.BigEndian.PutUint32(buf[0:4], uint32(f.Type))
	binary.BigEndian.PutUint32(buf[4:8], uint32(total))
	_, err = w.Write(buf)
	return err
}

// ReadControl decodes one frame. io.EOF is returned only at a clean frame boundary.
func ReadControl(r io.Reader) (ControlFrame, error) {
	var hdr [controlHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return ControlFrame{}, fmt.Errorf("%w: truncated control header", ErrProtocol)
		}
		return ControlFrame{}, err
	}
	t := MsgType(binary.BigEndian.Uint32(hdr[0:4]))
	total := binary.BigEndian.Uint32(hdr[4:8])
	if total < controlHeaderSize || total > MaxControlFrame {
		return ControlFrame{}, fmt.Errorf("%w: %s frame length %d outside [%d, %d]", ErrProtocol, t, total, controlHeaderSize, MaxControlFrame)
	}
	body := make([]byte, total-controlHeaderSize)
	if _, err := io.ReadFull(r, body); err != nil {
		return ControlFrame{}, fmt.Errorf("%w: truncated %s frame: %v", ErrProtocol, t, err)
	}
	f := ControlFrame{Type: t}
	if len(body) > 0 {
		var env envelope
		if !handEnvelope(body, &env) {
			env = envelope{}
			if err := unmarshal(body, &env); err != nil {
				return ControlFrame{}, fmt.Errorf("%w: %s frame body is not valid JSON: %v", ErrProtocol, t, err)
			}
		}
		f.ID, f.Data, f.Error = env.ID, env.Data, env.Error
	}
	if t == MsgError && f.Error == nil {
		return ControlFrame{}, fmt.Errorf("%w: ERROR frame for id %d carries no error", ErrProtocol, f.ID)
	}
	return f, nil
}

// StreamFrame is one decoded stream message: data (empty = EOF) or, when Seq has
// WindowUpdateBit set, a credit grant of Credit bytes for stream Seq&^WindowUpdateBit.
type StreamFrame struct {
	Seq  uint64
	Data []byte
}

// IsWindowUpdate reports whether f grants credit rather than carrying data.
func (f StreamFrame) IsWindowUpdate() bool { return f.Seq&WindowUpdateBit != 0 }

// Stream returns the stream the frame belongs to.
func (f StreamFrame) Stream() uint64 { return f.Seq &^ WindowUpdateBit }

// Credit returns the bytes granted by a window update.
func (f StreamFrame) Credit() uint32 {
	if len(f.Data) != 4 {
		return 0
	}
	return binary.BigEndian.Uint32(f.Data)
}

// WindowUpdate builds a frame granting n more bytes of credit on stream seq.
func WindowUpdate(seq uint64, n uint32) StreamFrame {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, n)
	return StreamFrame{Seq: seq | WindowUpdateBit, Data: b}
}

// WriteStream encodes f as one frame in a single write.
func WriteStream(w io.Writer, f StreamFrame) error {
	if len(f.Data) > MaxStreamPayload {
		return fmt.Errorf("%w: stream %d payload of %d bytes exceeds the %d-byte cap", ErrProtocol, f.Stream(), len(f.Data), MaxStreamPayload)
	}
	buf := make([]byte, streamHeaderSize+len(f.Data))
	binary.BigEndian.PutUint64(buf[0:8], f.Seq)
	binary.BigEndian.PutUint32(buf[8:12], uint32(len(f.Data)))
	copy(buf[streamHeaderSize:], f.Data)
	_, err := w.Write(buf)
	return err
}

// ReadStream decodes one frame. io.EOF is returned only at a clean frame boundary.
func ReadStream(r io.Reader) (StreamFrame, error) { return readStream(r, nil) }

// readStream is ReadStream reading the payload into buf when it fits (the frame's Data is
// then only valid until the next call): a reader that copies what it keeps allocates nothing
// per frame, however fast the peer sends.
func readStream(r io.Reader, buf []byte) (StreamFrame, error) {
	var hdr [streamHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return StreamFrame{}, fmt.Errorf("%w: truncated stream header", ErrProtocol)
		}
		return StreamFrame{}, err
	}
	seq := binary.BigEndian.Uint64(hdr[0:8])
	n := binary.BigEndian.Uint32(hdr[8:12])
	if n > MaxStreamPayload {
		return StreamFrame{}, fmt.Errorf("%w: stream %d frame of %d bytes exceeds the %d-byte cap", ErrProtocol, seq&^WindowUpdateBit, n, MaxStreamPayload)
	}
	if seq&^WindowUpdateBit == 0 {
		return StreamFrame{}, fmt.Errorf("%w: stream frame for reserved seq 0", ErrProtocol)
	}
	if seq&WindowUpdateBit != 0 && n != 4 {
		return StreamFrame{}, fmt.Errorf("%w: window update for stream %d has %d bytes, want 4", ErrProtocol, seq&^WindowUpdateBit, n)
	}
	data := buf[:0]
	if int(n) <= cap(buf) {
		data = buf[:n]
	} else {
		data = make([]byte, n)
	}
	if _, err := io.ReadFull(r, data); err != nil {
		return StreamFrame{}, fmt.Errorf("%w: truncated stream %d frame: %v", ErrProtocol, seq&^WindowUpdateBit, err)
	}
	return StreamFrame{Seq: seq, Data: data}, nil
}
