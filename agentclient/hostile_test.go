package agentclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/leakcheck"
)

// The host's live heap may grow by at most this much while a hostile guest does its worst:
// a few stream windows (256 KiB each) and a control frame (1 MiB cap), with room for the
// runtime's own noise, and far below what any of the attacks would cost if it were
// buffered (64 MiB and more) or allocated (4 GiB).
const hostileHeapBound = 8 << 20

// hostileGuest is the guest end of a pod's two channels, over unix stream sockets as
// QEMU's virtio-serial chardevs are. It answers every command (GETVERSION with the right
// version, anything else with an ACK) until answering is switched off, and otherwise sends
// whatever bytes a test scenario writes.
type hostileGuest struct {
	t        *testing.T
	c        *Client
	ctl, st  net.Conn // the guest's raw ends
	wmu      sync.Mutex
	silent   atomic.Bool // stop answering commands
	commands chan agentproto.ControlFrame
}

// socketPair returns two connected unix stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "virtio-serial")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

func newHostileGuest(t *testing.T, pod string) *hostileGuest {
	ctlH, ctlG := socketPair(t)
	stH, stG := socketPair(t)
	g := &hostileGuest{t: t, ctl: ctlG, st: stG, commands: make(chan agentproto.ControlFrame, 16)}
	g.c = New(&hypervisor.Channels{Control: ctlH, Stream: stH}, Options{Logf: t.Logf, PodID: pod})
	go g.answer()
	t.Cleanup(g.close)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := g.c.Handshake(ctx); err != nil {
		t.Fatalf("pod %s: handshake: %v", pod, err)
	}
	return g
}

func (g *hostileGuest) close() {
	g.c.Close()
	g.ctl.Close()
	g.st.Close()
}

func (g *hostileGuest) answer() {
	for {
		f, err := agentproto.ReadControl(g.ctl)
		if err != nil {
			return
		}
		select {
		case g.commands <- f:
		default:
		}
		if g.silent.Load() {
			continue
		}
		var data any
		if f.Type == agentproto.MsgGetVersion {
			data = agentproto.VersionInfo{Version: agentproto.Version}
		}
		ack, _ := agentproto.Marshal(agentproto.MsgAck, f.ID, data)
		g.wmu.Lock()
		agentproto.WriteControl(g.ctl, ack)
		g.wmu.Unlock()
	}
}

// control writes raw bytes on the control channel, between whole answers.
func (g *hostileGuest) control(b []byte) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	g.ctl.Write(b) // fails once the host hung up, which is what some scenarios provoke
}

func (g *hostileGuest) frame(typ agentproto.MsgType, id uint64, data any) []byte {
	f, err := agentproto.Marshal(typ, id, data)
	if err != nil {
		g.t.Fatal(err)
	}
	var b bytes.Buffer
	agentproto.WriteControl(&b, f)
	return b.Bytes()
}

// streamHeader is a stream frame's header announcing n payload bytes on seq.
func streamHeader(seq uint64, n uint32) []byte {
	h := make([]byte, 12)
	binary.BigEndian.PutUint64(h, seq)
	binary.BigEndian.PutUint32(h[8:], n)
	return h
}

// ping is a command round trip: the pod's agent connection still works.
func (g *hostileGuest) ping(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return g.c.Call(ctx, agentproto.MsgPing, nil, nil)
}

// watchInit registers container c1's init with stdout and stderr streams, as the pod daemon
// does before NEWCONTAINER.
func (g *hostileGuest) watchInit() *Process {
	p, err := g.c.Watch("c1", "init", agentproto.Stdio{Stdio: g.c.NextSeq(), Stderr: g.c.NextSeq(), NoStdin: true})
	if err != nil {
		g.t.Fatal(err)
	}
	return p
}

// heapPeak samples the live heap (after a collection, so that garbage the attack made the
// host allocate and drop does not count, only what it holds) until stop is closed, and
// returns the highest value seen.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, liveHeap())
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// liveHeap is the lower of the heap's sizes after two collections in a row: objects
// allocated while a collection marks count as live in its figure, so with the host reading
// an attack's frames at full speed one figure holds whatever was allocated during that
// collection (4-9 MiB of already-dropped PROCESSEXIT decodes under load); what the host
// really holds survives both.
func liveHeap() uint64 {
	var low uint64
	for i := 0; i < 2; i++ {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if i == 0 || ms.HeapAlloc < low {
			low = ms.HeapAlloc
		}
	}
	return low
}

// TestHostileGuest plays a guest that breaks every rule of the protocol against the host's
// agent client. For each attack: the host either fails the pod with a protocol error (its
// pending calls return) or keeps working (a command still gets its answer); its heap never
// grows by more than hostileHeapBound; once the pod is closed no goroutine is left; and a
// well-behaved neighbour pod served by the same process answers every ping meanwhile.
func TestHostileGuest(t *testing.T) {
	const flood = 64 << 20 // bytes an attack pushes where it pushes volume
	cases := []struct {
		name string
		// attack runs as the guest; it returns when the attack is over (or cannot continue
		// because the host hung up).
		attack func(g *hostileGuest)
		fails  bool // the pod must fail (protocol error), else keep working
		// stalls: the guest stops in the middle of a control frame. Nothing is wrong yet, so
		// the pod does not fail; every call returns at its deadline instead of hanging, and
		// closing the pod frees everything.
		stalls bool
	}{
		{"malformed JSON body", func(g *hostileGuest) {
			b := []byte("{not json")
			h := make([]byte, 8)
			binary.BigEndian.PutUint32(h, uint32(agentproto.MsgAck))
			binary.BigEndian.PutUint32(h[4:], uint32(8+len(b)))
			g.control(append(h, b...))
		}, true, false},
		{"control frame length 4 GiB", func(g *hostileGuest) {
			g.control([]byte{0, 0, 0, byte(agentproto.MsgAck), 0xff, 0xff, 0xff, 0xff})
		}, true, false},
		{"control frame length below its header", func(g *hostileGuest) {
			g.control([]byte{0, 0, 0, byte(agentproto.MsgAck), 0, 0, 0, 3})
		}, true, false},
		{"stream frame length 4 GiB", func(g *hostileGuest) {
			g.watchInit()
			g.st.Write(streamHeader(1, 0xffffffff))
		}, true, false},
		{"unknown message type", func(g *hostileGuest) {
			g.control(g.frame(agentproto.MsgType(0x7fff), 0, map[string]int{"x": 1}))
		}, true, false},
		{"a host command sent by the guest", func(g *hostileGuest) {
			g.control(g.frame(agentproto.MsgDestroyPod, 5, nil))
		}, true, false},
		{"ACK of a request never made", func(g *hostileGuest) {
			g.control(g.frame(agentproto.MsgAck, 1<<40, nil))
		}, true, false},
		{"ERROR of a request never made", func(g *hostileGuest) {
			var b bytes.Buffer
			agentproto.WriteControl(&b, agentproto.ControlFrame{Type: agentproto.MsgError, ID: 77, Error: &agentproto.RemoteError{Message: "x"}})
			g.control(b.Bytes())
		}, true, false},
		{"second exit of one process", func(g *hostileGuest) {
			g.watchInit()
			exit := g.frame(agentproto.MsgProcessExit, 0, agentproto.ProcessExit{Container: "c1", Process: "init"})
			g.control(append(exit, exit...))
		}, true, false},
		{"stream data beyond the credit granted (a flood the host does not read)", func(g *hostileGuest) {
			g.watchInit() // nobody reads its stdout
			frame := append(streamHeader(1, agentproto.MaxStreamPayload), make([]byte, agentproto.MaxStreamPayload)...)
			for sent := 0; sent < flood; sent += agentproto.MaxStreamPayload {
				if _, err := g.st.Write(frame); err != nil {
					return // the host hung up: the pod failed
				}
			}
		}, true, false},
		{"data after EOF on a stream", func(g *hostileGuest) {
			g.watchInit()
			g.st.Write(streamHeader(1, 0))
			g.st.Write(append(streamHeader(1, 1), 'x'))
		}, true, false},
		{"window update beyond the window", func(g *hostileGuest) {
			p := g.watchInit()
			_ = p
			credit := make([]byte, 4)
			binary.BigEndian.PutUint32(credit, 1<<31)
			g.st.Write(append(streamHeader(1|agentproto.WindowUpdateBit, 4), credit...))
		}, true, false},
		{"64 MiB of stream data for ids nobody opened", func(g *hostileGuest) {
			frame := append(streamHeader(0, agentproto.MaxStreamPayload), make([]byte, agentproto.MaxStreamPayload)...)
			for sent, seq := 0, uint64(1000); sent < flood; sent, seq = sent+agentproto.MaxStreamPayload, seq+1 {
				binary.BigEndian.PutUint64(frame, seq)
				if _, err := g.st.Write(frame); err != nil {
					g.t.Errorf("host hung up on data for unknown streams: %v", err)
					return
				}
			}
		}, false, false},
		{"100000 exits of processes never started", func(g *hostileGuest) {
			// One chunk of frames, sent again and again: the attacker's own allocations
			// must not blur the host's heap figure.
			exit := g.frame(agentproto.MsgProcessExit, 0, agentproto.ProcessExit{Container: "ghost", Process: "p"})
			chunk := bytes.Repeat(exit, 10000)
			for i := 0; i < 10; i++ {
				g.control(chunk)
			}
		}, false, false},
		{"100000 READY", func(g *hostileGuest) {
			chunk := bytes.Repeat(g.frame(agentproto.MsgReady, 0, nil), 10000)
			for i := 0; i < 10; i++ {
				g.control(chunk)
			}
		}, false, false},
		{"output that never ends (256 MiB, within credit)", func(g *hostileGuest) {
			p := g.watchInit()
			_, stdout, _ := p.Streams()
			go io.Copy(io.Discard, stdout)
			// A guest that honours the host's credit and never stops: raw frames, so that the
			// attacker allocates nothing per frame and the heap measured is the host's.
			credit := make(chan uint32, 64)
			go func() {
				for {
					f, err := agentproto.ReadStream(g.st)
					if err != nil {
						return
					}
					if f.IsWindowUpdate() && f.Stream() == 1 {
						credit <- f.Credit()
					}
				}
			}()
			frame := append(streamHeader(1, agentproto.MaxStreamPayload), make([]byte, agentproto.MaxStreamPayload)...)
			avail := agentproto.InitialWindow
			for sent := 0; sent < 4*flood; sent += agentproto.MaxStreamPayload {
				for avail < agentproto.MaxStreamPayload {
					select {
					case n := <-credit:
						avail += int(n)
					case <-time.After(testTimeout):
						g.t.Errorf("the host stopped granting credit after %d bytes", sent)
						return
					}
				}
				if _, err := g.st.Write(frame); err != nil {
					g.t.Errorf("guest output refused after %d bytes: %v", sent, err)
					return
				}
				avail -= agentproto.MaxStreamPayload
			}
		}, false, false},
		{"a stall in the middle of a control frame", func(g *hostileGuest) {
			g.silent.Store(true) // the agent hangs: it answers nothing more
			ack := g.frame(agentproto.MsgAck, 1<<20, nil)
			g.control(ack[:len(ack)/2])
		}, false, true},
		{"a stall in the middle of a stream frame", func(g *hostileGuest) {
			g.watchInit()
			g.st.Write(append(streamHeader(1, 1000), 'a', 'b'))
			// and nothing more: the control channel must not care
		}, false, false},
	}
	// The neighbour pod lives through every scenario and must never notice.
	neighbour := newHostileGuest(t, "neighbour")
	stopNeighbour := make(chan struct{})
	neighbourDone := make(chan error, 1)
	var neighbourPings atomic.Int64
	pace := time.NewTicker(5 * time.Millisecond) // a steady load, not a spin
	defer pace.Stop()
	go func() {
		for {
			select {
			case <-stopNeighbour:
				neighbourDone <- nil
				return
			default:
			}
			if err := neighbour.ping(10 * time.Second); err != nil {
				neighbourDone <- err
				return
			}
			neighbourPings.Add(1)
			<-pace.C
		}
	}()

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			baseHeap := liveHeap()
			leakcheck.Goroutines(t) // registered first: runs after the pod's cleanup closed it
			g := newHostileGuest(t, "hostile")
			stop := make(chan struct{})
			peakCh := heapPeak(stop)
			attackDone := make(chan struct{})
			go func() {
				defer close(attackDone)
				tc.attack(g)
			}()
			if tc.stalls {
				<-attackDone
				start := time.Now()
				err := g.ping(time.Second)
				if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
					t.Fatalf("a call on a stalled channel returned %v after %s, want its deadline", err, time.Since(start))
				}
			} else if tc.fails {
				select {
				case <-g.c.Done():
				case <-time.After(testTimeout):
					t.Fatal("the pod did not fail")
				}
				if err := g.c.Err(); !errors.Is(err, agentproto.ErrProtocol) {
					t.Fatalf("pod failed with %v, want a protocol error", err)
				}
				if err := g.ping(testTimeout); err == nil {
					t.Fatal("a command succeeded on a failed pod")
				}
			} else {
				select {
				case <-attackDone:
				case <-g.c.Done():
					t.Fatalf("the pod failed: %v", g.c.Err())
				case <-time.After(2 * testTimeout):
					t.Fatal("the attack did not end: the host stopped reading")
				}
				if err := g.ping(testTimeout); err != nil {
					t.Fatalf("the pod stopped working: %v", err)
				}
			}
			close(stop)
			peak := <-peakCh
			growth := int64(peak) - int64(baseHeap)
			t.Logf("live heap: %d KiB before, peak %d KiB (growth %d KiB)", baseHeap>>10, peak>>10, growth>>10)
			if growth > hostileHeapBound {
				t.Errorf("host heap grew by %d MiB, bound %d MiB", growth>>20, hostileHeapBound>>20)
			}
			g.close()
			<-attackDone
		})
	}
	close(stopNeighbour)
	if err := <-neighbourDone; err != nil {
		t.Fatalf("the neighbour pod failed a ping during the attacks: %v", err)
	}
	t.Logf("neighbour pod answered %d pings during the attacks", neighbourPings.Load())
}
