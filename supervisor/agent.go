package supervisor

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/network"
)

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

// connectAgent connects to the VM's agent and checks it speaks our protocol. A cold-booted
// guest announces itself with READY first; a restored one is already up and does not.
// enter is told each step it waits in.
func connectAgent(ctx context.Context, vm hypervisor.VM, podID string, enter func(step string)) (guestAgent, error) {
	ch, err := vm.Channels(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to the guest agent: %w", err)
	}
	log := logging.G(ctx)
	c := agentclient.New(ch, agentclient.Options{
		PodID: podID,
		Logf:  func(format string, args ...any) { log.Log(ctx, slog.LevelWarn, fmt.Sprintf(format, args...)) },
	})
	if !vm.Restored() {
		enter("waiting for the agent's READY")
		if err := c.WaitReady(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("wait for the guest agent: %w", err)
		}
	}
	enter("version handshake (GETVERSION)")
	if _, err := c.Handshake(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return agentAdapter{c}, nil
}
