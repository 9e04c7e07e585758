package supervisor

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// pipeVM is a cold-booted VM whose agent channels are in-memory pipes.
type pipeVM struct {
	idleVM
	ch *hypervisor.Channels
}

func (v *pipeVM) Channels(context.Context) (*hypervisor.Channels, error) { return v.ch, nil }

// The boot's handshake is pipelined: GETVERSION is written before the guest's READY and
// STARTPOD right behind it, before GETVERSION is answered; STARTPOD's answer counts only
// once the version matched. The fake guest reads in that order, so a host that waited for
// READY or for GETVERSION's answer first would hang here until the deadline.
func TestConnectAgentPipelinesTheHandshake(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		wantErr error
	}{
		{name: "same version", version: agentproto.Version},
		{name: "other version", version: agentproto.Version + 1, wantErr: agentclient.ErrVersionMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ctlHost, ctlGuest := net.Pipe()
			streamHost, streamGuest := net.Pipe()
			defer ctlGuest.Close()
			defer streamGuest.Close()
			vm := &pipeVM{idleVM: idleVM{done: make(chan struct{})}, ch: &hypervisor.Channels{Control: ctlHost, Stream: streamHost}}

			guest := make(chan error, 1)
			go func() { guest <- fakeBootingGuest(ctlGuest, tc.version) }()
			a, err := connectAgent(ctx, vm, "p", func(string) {})
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer a.Close()
			err = a.Call(ctx, agentproto.MsgStartPod, agentproto.Pod{ID: "p"}, nil)
			if gerr := <-guest; gerr != nil {
				t.Fatalf("guest: %v", gerr)
			}
			if tc.wantErr == nil && err != nil {
				t.Fatalf("STARTPOD: %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("STARTPOD after a version mismatch: %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// fakeBootingGuest expects GETVERSION before it sends READY, then STARTPOD before it answers
// GETVERSION (with version), then acknowledges STARTPOD.
func fakeBootingGuest(ctl net.Conn, version int) error {
	getVersion, err := agentproto.ReadControl(ctl)
	if err != nil || getVersion.Type != agentproto.MsgGetVersion {
		return errors.Join(errors.New("the first frame is not GETVERSION"), err)
	}
	if err := agentproto.WriteControl(ctl, agentproto.ControlFrame{Type: agentproto.MsgReady}); err != nil {
		return err
	}
	startPod, err := agentproto.ReadControl(ctl)
	if err != nil || startPod.Type != agentproto.MsgStartPod {
		return errors.Join(errors.New("STARTPOD did not follow GETVERSION before its answer"), err)
	}
	v, err := agentproto.Marshal(agentproto.MsgAck, getVersion.ID, agentproto.VersionInfo{Version: version, Agent: "fake"})
	if err != nil {
		return err
	}
	if err := agentproto.WriteControl(ctl, v); err != nil {
		return err
	}
	return agentproto.WriteControl(ctl, agentproto.ControlFrame{Type: agentproto.MsgAck, ID: startPod.ID})
}
