package qemu

import (
	"context"
	"net"
	"sync"
	"time"
)

// QEMU reads a virtio-serial port's chardev socket only while the guest can take data: its
// main loop re-checks that when it prepares its next poll. The guest opening its port does
// not wake that loop (virtio-console's set_guest_connected notifies nobody; only the guest
// adding receive buffers does), so what the host wrote before the guest opened the port —
// GETVERSION, which the host writes at once, STARTPOD right behind it — can sit unread until
// something else wakes the main loop: a guest timer, a QMP command. A guest that has gone
// idle with no timer armed (microvm under TCG stops its tick when idle) then never gets it;
// this was seen once in ~90 template creations: READY out, GETVERSION unanswered for the
// park's 60 s, QEMU idle. The guest's first bytes on the control port prove it opened its
// ports (the agent opens both before it writes READY or any answer): one QMP command then
// runs QEMU's main loop, which starts reading the sockets.

// mainLoopNudgeTimeout bounds that QMP command; it is only a wake-up, its answer unused.
const mainLoopNudgeTimeout = 5 * time.Second

// portOpenedConn is the host's end of a VM's control port; it calls nudge (once, in the
// background) when the first bytes arrive from the guest. It keeps *net.UnixConn's methods:
// a holder passes the descriptor on (File).
type portOpenedConn struct {
	*net.UnixConn
	once  sync.Once
	nudge func()
}

func (c *portOpenedConn) Read(b []byte) (int, error) {
	n, err := c.UnixConn.Read(b)
	if n > 0 {
		c.once.Do(func() { go c.nudge() })
	}
	return n, err
}

// nudgeOnPortOpen wraps a control channel so that the guest's first bytes run QEMU's main
// loop (above); a connection of another type is returned as it is.
func (v *vm) nudgeOnPortOpen(c net.Conn) net.Conn {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c
	}
	return &portOpenedConn{UnixConn: uc, nudge: v.nudgeMainLoop}
}

// nudgeMainLoop makes QEMU's main loop run once: any QMP command does.
func (v *vm) nudgeMainLoop() {
	ctx, cancel := context.WithTimeout(context.Background(), mainLoopNudgeTimeout)
	defer cancel()
	if _, err := v.RunState(ctx); err != nil {
		v.log.Debug("wake QEMU's main loop after the guest opened its ports", "error", err)
	}
}
