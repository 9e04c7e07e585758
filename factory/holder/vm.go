package holder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/internal/wire"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/internal/procstat"
)

// Limits of driving a holder.
const (
	// killOpTimeout bounds the kill op before the holder itself is killed.
	killOpTimeout = 2 * time.Second
	// holderExitWait bounds the wait for a holder to exit once its VM is gone.
	holderExitWait = 10 * time.Second
	// dialTimeout bounds dialling the VM's channels (QEMU listens from its start).
	dialTimeout = 5 * time.Second
)

// VM is a VM held by a holder process, driven through holder.sock and QEMU's
// sockets in the VM's directory. The factory daemon has one per pooled VM (the holder is
// its child); a pod daemon has one for the VM it was handed (the holder is not its child:
// its exit is seen through a pidfd).
type VM struct {
	id    string
	info  wire.VMInfo
	proc  *proc
	files qemu.VMFiles
	grown bool

	mu sync.Mutex
	// qemu is a pidfd of the VM's QEMU for the pod daemon it was handed to (Attach), -1
	// otherwise: Kill signals QEMU through it instead of asking the holder.
	qemu          int
	channelsTaken bool
	// parked are the agent's channels as the holder kept them open (Attach), nil when the
	// holder had none to pass: Channels dials then.
	parked *hypervisor.Channels
}

var (
	_ hypervisor.VM         = (*VM)(nil)
	_ hypervisor.Hotplugger = (*VM)(nil)
	_ factory.Warmer        = (*VM)(nil)
)

func newVM(id string, info wire.VMInfo, p *proc) *VM {
	return &VM{id: id, info: info, proc: p, files: qemu.FilesIn(info.Dir), grown: info.Grown, qemu: -1}
}

func (v *VM) ID() string            { return v.id }
func (v *VM) Pid() int              { return v.info.QEMUPid }
func (v *VM) Done() <-chan struct{} { return v.proc.done }
func (v *VM) Accel() string         { return v.info.Accel }

// socket is holder.sock, which moves with the VM's directory on adopt.
func (v *VM) socket() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return filepath.Join(v.info.Dir, Socket)
}

func (v *VM) ConsoleLog() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.files.Console
}

// Restored is true: the agent was brought up and parked by the holder before the hand-out,
// so no READY is to be waited for (the agent may send one when the pod daemon connects;
// the client ignores it).
func (v *VM) Restored() bool { return true }

// Grown reports whether CPUs or memory were hot-plugged for the request.
func (v *VM) Grown() bool { return v.grown }

// HolderPid is the holder process's pid.
func (v *VM) HolderPid() int { return v.info.HolderPid }

// Channels returns the agent's connection the holder passed on (Attach), else dials the
// control and stream channels' sockets.
func (v *VM) Channels(ctx context.Context) (*hypervisor.Channels, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.channelsTaken {
		return nil, fmt.Errorf("vm %s: channels already taken: %w", v.id, errdefs.ErrFailedPrecondition)
	}
	if ch := v.parked; ch != nil {
		v.parked, v.channelsTaken = nil, true
		return ch, nil
	}
	if !v.proc.alive() {
		return nil, fmt.Errorf("vm %s: channels: %w", v.id, hypervisor.ErrVMExited)
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	// QEMU's chardev servers take one client at a time: the holder disconnected after
	// parking the agent, so these are the VM's only connections.
	ctl, err := d.DialContext(ctx, "unix", v.files.Control)
	if err != nil {
		return nil, fmt.Errorf("vm %s: control channel: %w", v.id, err)
	}
	stream, err := d.DialContext(ctx, "unix", v.files.Stream)
	if err != nil {
		ctl.Close()
		return nil, fmt.Errorf("vm %s: stream channel: %w", v.id, err)
	}
	v.channelsTaken = true
	return &hypervisor.Channels{Control: ctl, Stream: stream}, nil
}

// Shutdown has the holder shut the VM down (power button, quit, kill; see
// hypervisor.VM) within ctx, and returns once the holder exited.
func (v *VM) Shutdown(ctx context.Context) error {
	if !v.proc.alive() {
		return nil
	}
	if _, err := wire.Call(ctx, v.socket(), wire.Request{Op: wire.OpShutdown}); err != nil && v.proc.alive() {
		return v.Kill()
	}
	return v.waitExit()
}

// Kill kills the VM's QEMU, through its pidfd when this process was handed the VM (the
// holder, its parent, sees it die and exits: a request to the holder would put its
// wake-up before the kill on every pod's end), else by asking the holder; it kills the
// holder (and with it QEMU, whose Pdeathsig points at the holder) if that fails, and
// returns once the holder exited.
func (v *VM) Kill() error {
	fd := v.takeQEMU()
	if fd >= 0 {
		err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
		if err == nil || errors.Is(err, unix.ESRCH) {
			return v.waitExit()
		}
	}
	if !v.proc.alive() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), killOpTimeout)
	_, err := wire.Call(ctx, v.socket(), wire.Request{Op: wire.OpKill})
	cancel()
	if err != nil {
		v.proc.kill()
	}
	return v.waitExit()
}

// takeQEMU hands the caller the pidfd of QEMU (-1: none), which it closes.
func (v *VM) takeQEMU() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	fd := v.qemu
	v.qemu = -1
	return fd
}

func (v *VM) waitExit() error {
	defer func() {
		if fd := v.takeQEMU(); fd >= 0 {
			unix.Close(fd)
		}
		v.mu.Lock()
		if v.parked != nil {
			v.parked.Close()
			v.parked = nil
		}
		v.mu.Unlock()
	}()
	select {
	case <-v.proc.done:
		return nil
	case <-time.After(holderExitWait):
		v.proc.kill()
		select {
		case <-v.proc.done:
			return nil
		case <-time.After(holderExitWait):
			return fmt.Errorf("vm %s: holder %d still running after SIGKILL", v.id, v.proc.pid)
		}
	}
}

// HotplugCPUs has the holder plug vCPUs (see hypervisor.Hotplugger).
func (v *VM) HotplugCPUs(ctx context.Context, total int) error {
	if _, err := wire.Call(ctx, v.socket(), wire.Request{Op: wire.OpGrow, CPUs: total}); err != nil {
		return fmt.Errorf("vm %s: %w", v.id, err)
	}
	return nil
}

// HotplugMemory has the holder plug memory (see hypervisor.Hotplugger).
func (v *VM) HotplugMemory(ctx context.Context, totalMiB int) error {
	if _, err := wire.Call(ctx, v.socket(), wire.Request{Op: wire.OpGrow, MemoryMiB: totalMiB}); err != nil {
		return fmt.Errorf("vm %s: %w", v.id, err)
	}
	return nil
}

// Warm has the holder run the warm-up in the pooled VM (op warm; factory.Warmer) and
// returns once it ran: what it took in the guest, zero if there was none to run.
func (v *VM) Warm(ctx context.Context, light bool) (factory.WarmResult, error) {
	resp, err := wire.Call(ctx, v.socket(), wire.Request{Op: wire.OpWarm, Light: light})
	if err != nil {
		return factory.WarmResult{}, fmt.Errorf("vm %s: %w", v.id, err)
	}
	if resp.Warmup == nil {
		return factory.WarmResult{}, nil
	}
	return *resp.Warmup, nil
}

// Adopt hands the VM to pod daemon pid, moving its directory onto dir.
func (v *VM) Adopt(ctx context.Context, pid int, dir string) (wire.VMInfo, error) {
	resp, err := wire.Call(ctx, v.socket(), wire.Request{Op: wire.OpAdopt, Pid: pid, Dir: dir})
	if err != nil {
		return wire.VMInfo{}, fmt.Errorf("vm %s: %w", v.id, err)
	}
	v.mu.Lock()
	v.info = *resp.VM
	v.files = qemu.FilesIn(v.info.Dir)
	v.mu.Unlock()
	return *resp.VM, nil
}

// Attach takes over the VM that the factory daemon handed to this process (info is its
// answer): it watches the holder's exit and makes sure the holder answers. The VM is the
// caller's from then on; if Attach fails, the holder still follows the caller's pid.
func Attach(ctx context.Context, id string, info wire.VMInfo) (*VM, error) {
	p, err := watchProcess(info.HolderPid)
	if err != nil {
		return nil, fmt.Errorf("vm %s: holder: %w", id, err)
	}
	vm := newVM(id, info, p)
	// The pidfd was opened after the factory daemon answered: make sure it is the holder's
	// (a pid is only recycled after its process is gone, and a holder that answers is not).
	// Its answer brings the agent's connection, open: the agent is serving it, without the
	// reconnect a dial would cost (holder.detach).
	resp, err := wire.CallFiles(ctx, vm.socket(), wire.Request{Op: wire.OpAgent})
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		// A holder of an older runv knows no op agent; it closed the connection on adopt.
		closeFiles(resp.Files)
		resp, err = wire.Call(ctx, vm.socket(), wire.Request{Op: wire.OpInfo})
	}
	if err != nil {
		closeFiles(resp.Files)
		p.release()
		return nil, fmt.Errorf("vm %s: holder %d does not answer: %w", id, info.HolderPid, err)
	}
	vm.parked = channelsOf(resp.Files)
	// Without it Kill asks the holder: slower, as safe.
	if fd, err := childPidfd(info.QEMUPid, info.HolderPid); err == nil {
		vm.qemu = fd
	}
	return vm, nil
}

// channelsOf makes the agent's control and stream channels of the descriptors the holder
// passed, which it closes; nil if there are not exactly those two sockets (Channels dials).
func channelsOf(files []*os.File) *hypervisor.Channels {
	defer closeFiles(files)
	if len(files) != 2 {
		return nil
	}
	var conns []net.Conn
	for _, f := range files {
		c, err := net.FileConn(f)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil
		}
		conns = append(conns, c)
	}
	return &hypervisor.Channels{Control: conns[0], Stream: conns[1]}
}

// childPidfd opens a pidfd of process pid and makes sure it is parent's child: a pid is
// only recycled once its process was reaped, and the holder, which reaps its QEMU, spawns
// nothing else, so a child of the holder under QEMU's pid is its QEMU.
func childPidfd(pid, parent int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, err
	}
	if ppid, err := procstat.ParentOf(pid); err != nil || ppid != parent {
		unix.Close(fd)
		return -1, fmt.Errorf("process %d is not the child of holder %d", pid, parent)
	}
	return fd, nil
}

// NICs describes the VM's network devices (hypervisor.NetworkDevices): the holder's QEMU
// made them as every QEMU of runv does.
func (v *VM) NICs() []hypervisor.NIC { return qemu.NICsOf(v.info.QEMUPid) }
