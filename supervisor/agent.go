package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/network"
)

// slowCallAfter is how long a command may wait for the guest agent's answer before the
// daemon logs it at warning with what the VM shows (vmSnapshot). Commands answer in
// milliseconds to a few seconds on a loaded host.
const slowCallAfter = 15 * time.Second

// agentAdapter fits *agentclient.Client to guestAgent.
type agentAdapter struct{ *agentclient.Client }

func (a agentAdapter) Watch(container, process string, stdio agentproto.Stdio) (exitWaiter, error) {
	return a.Client.Watch(container, process, stdio)
}

func (a agentAdapter) DialPort(ctx context.Context, port uint16) (network.GuestConn, error) {
	c, err := a.Client.DialPort(ctx, port)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// connectAgent connects to the VM's agent and returns once it is there: a cold-booted
// guest announces itself with READY first, a restored one is already up and does not. The
// version handshake is still in flight then (see verifiedAgent): the pod's first command
// (STARTPOD) is written right behind GETVERSION. enter is told each step it waits in.
func connectAgent(ctx context.Context, vm hypervisor.VM, podID string, enter func(step string)) (guestAgent, error) {
	ch, err := vm.Channels(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to the guest agent: %w", err)
	}
	log := logging.G(ctx)
	c := agentclient.New(ch, agentclient.Options{
		PodID: podID,
		Logf:  func(format string, args ...any) { log.Log(ctx, slog.LevelWarn, fmt.Sprintf(format, args...)) },
		// Every command, not only the boot's: the stall of docs/reliability.md ("A boot
		// whose agent answers late") also hit the pod's later requests.
		SlowAfter: slowCallAfter,
		OnSlow: func(t agentproto.MsgType, waited time.Duration) {
			log.Warn("the guest agent has not answered yet", append([]any{"command", t.String(),
				"waited", waited.Round(time.Millisecond)}, vmSnapshot(context.WithoutCancel(ctx), vm)...)...)
		},
	})
	// GETVERSION is written at once, before a cold-booted guest's READY: QEMU keeps it in
	// the control socket until the agent opens its port, and the agent reads it right after
	// sending READY, so the host's reaction to READY is not on the boot's path (a few ms
	// of wake-ups on both sides, more on a loaded host). A GETVERSION unread in the socket,
	// or reported slow by OnSlow, during a boot therefore means the agent is not up yet.
	a := &verifiedAgent{agentAdapter: agentAdapter{c}, verified: make(chan struct{})}
	go func() {
		_, a.handshakeErr = c.Handshake(ctx)
		close(a.verified)
	}()
	if !vm.Restored() {
		enter("waiting for the agent's READY")
		ready, err := c.WaitReady(ctx)
		if err != nil {
			c.Close()
			<-a.verified // fails with the closed client
			return nil, fmt.Errorf("wait for the guest agent: %w", err)
		}
		log.Debug("boot: agent ready", "boot_steps", ready.BootSteps)
		if err := hypervisor.SaveBootTranslations(ctx, vm); err != nil {
			log.Warn("boot translations not saved: later boots translate as this one did", "error", err)
		}
	}
	return a, nil
}

// verifiedAgent is an agent whose version handshake may still be in flight. A command is
// written at once, behind GETVERSION, but its answer only counts once the agent turned out
// to speak our protocol: an agent of another version gets the handshake's error (what to
// rebuild), whatever it made of the command. STARTPOD's clock is still current then: it is
// written after READY, not before the boot.
type verifiedAgent struct {
	agentAdapter
	verified     chan struct{} // closed when the handshake ended
	handshakeErr error
}

func (a *verifiedAgent) Call(ctx context.Context, t agentproto.MsgType, payload, reply any) error {
	err := a.agentAdapter.Call(ctx, t, payload, reply)
	select {
	case <-a.verified:
		if a.handshakeErr != nil {
			return a.handshakeErr
		}
	case <-ctx.Done():
		return fmt.Errorf("version handshake: %w", ctx.Err())
	}
	return err
}
