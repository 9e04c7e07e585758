package agentclient

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// FuzzClientControl plays arbitrary bytes as the guest's control channel to a client with
// one command in flight (GETVERSION, id 1) and one watched process. Whatever the bytes, the
// client must not panic or hang, must fail with a classified error once the channel ends,
// and the pending call must return.
func FuzzClientControl(f *testing.F) {
	frame := func(t agentproto.MsgType, id uint64, data any) []byte {
		fr, err := agentproto.Marshal(t, id, data)
		if err != nil {
			f.Fatal(err)
		}
		var b bytes.Buffer
		if err := agentproto.WriteControl(&b, fr); err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	errFrame := func(id uint64, kind string) []byte {
		var b bytes.Buffer
		agentproto.WriteControl(&b, agentproto.ControlFrame{Type: agentproto.MsgError, ID: id, Error: &agentproto.RemoteError{Kind: kind, Message: "m"}})
		return b.Bytes()
	}
	exit := frame(agentproto.MsgProcessExit, 0, agentproto.ProcessExit{Container: "c1", Process: "init", ExitCode: 1})
	f.Add([]byte{})
	f.Add(frame(agentproto.MsgReady, 0, nil))
	f.Add(frame(agentproto.MsgAck, 1, agentproto.VersionInfo{Version: agentproto.Version}))
	f.Add(append(frame(agentproto.MsgReady, 0, nil), frame(agentproto.MsgAck, 1, agentproto.VersionInfo{Version: 99})...))
	f.Add(errFrame(1, agentproto.KindInvalid))
	f.Add(exit)
	f.Add(append(append([]byte{}, exit...), exit...))
	f.Add(frame(agentproto.MsgAck, 2, nil))
	f.Add([]byte{0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		ctlH, ctlG := net.Pipe()
		stH, stG := net.Pipe()
		c := New(&hypervisor.Channels{Control: ctlH, Stream: stH}, Options{PodID: "fuzz"})
		defer stG.Close()
		if _, err := c.Watch("c1", "init", agentproto.Stdio{Stdio: c.NextSeq(), Stderr: c.NextSeq()}); err != nil {
			t.Fatal(err)
		}
		type result struct {
			v   agentproto.VersionInfo
			err error
		}
		res := make(chan result, 1)
		go func() {
			v, err := c.Handshake(context.Background())
			res <- result{v, err}
		}()
		// Feed the bytes only once the command is out, so that each input means one thing.
		if _, err := agentproto.ReadControl(ctlG); err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, ctlG)
		ctlG.Write(data)
		ctlG.Close()
		<-c.Done()
		r := <-res
		if r.err == nil && r.v.Version != agentproto.Version {
			t.Fatalf("handshake accepted version %d", r.v.Version)
		}
		err := c.Err()
		if !errors.Is(err, agentproto.ErrProtocol) && !errors.Is(err, hypervisor.ErrVMExited) {
			t.Fatalf("unclassified client error: %v", err)
		}
	})
}
