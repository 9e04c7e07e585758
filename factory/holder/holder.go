// Package holder is the holder process of one pooled VM, and the VM as the factory daemon
// (factory/factoryd) and pod daemons drive it through that process (VM, Factory).
//
// # Processes
//
//	factory daemon ──(Pdeathsig)──▶ holder ──(Pdeathsig)──▶ qemu      pooled VM
//	factory daemon ─ ─ ─ ─ ─ ─ ─ ▶ holder ──(Pdeathsig)──▶ qemu      handed out to pod daemon P
//	                                  └── watches P (pidfd): P gone → qemu killed
//
// Every pooled VM is held by a small process of its own, a holder (`runv-holder`, or `runv
// manage factory-daemon --hold INVOCATION`), that boots it with the base factory (direct or template)
// and is QEMU's parent. The factory daemon starts holders with Pdeathsig=SIGKILL, so killing
// the factory daemon kills every pooled VM: nothing is left behind. Handing a VM to pod daemon
// P, the factory daemon tells the holder to adopt P: the holder clears its Pdeathsig and
// watches P through a pidfd instead. From then on the VM lives exactly as long as P (or until
// P shuts it down), as a directly booted VM lives as long as its pod daemon; restarting or
// killing the factory daemon no longer affects it. The factory daemon stays the holder's
// parent only to reap it.
//
// Why a holder process rather than handing QEMU itself over: QEMU's Pdeathsig points at the
// thread that forked it and cannot be changed from outside, and Linux has no way to
// re-parent a process to another one. A VM forked by the factory daemon would die with the
// factory daemon, handed out or not.
//
// # Files
//
// A pooled VM lives in <root>/@factory/<pool>/<vm>/: holder.sock, holder.log and QEMU's
// files (qmp.sock, ctl.sock, stream.sock, console.log, ...), its 9p share in share/. On
// hand-out the share directory is renamed onto the pod's share directory and then the
// VM's directory onto the pod's vm/ directory, so a handed-out VM's files are where a
// directly booted VM's are. QEMU keeps serving both: it resolves 9p paths from a descriptor
// of the directory it opened, and unix sockets are found by inode once dialled.
//
// # The agent's connection
//
// QEMU's chardev sockets take one client at a time, and the agent notices a new one only
// through a wake-up (SIGIO) and answers it with READY. The holder dials the agent once,
// parks and warms it over that connection, and on adopt stops its client but keeps the two
// sockets open; the pod daemon takes them with op agent (SCM_RIGHTS) and speaks to an agent
// that never saw its host change (detach, Attach).
package holder

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/internal/wire"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/procstat"
	"github.com/runv-project/runv/internal/sockets"
	"github.com/runv-project/runv/logging"
)

// Files of the holder in a held VM's directory.
const (
	// Socket is where the holder answers the ops info, agent, warm, adopt, grow, shutdown and kill.
	Socket = "holder.sock"
	// Log is the holder's stdout and stderr.
	Log = "holder.log"
)

// Limits of a holder.
const (
	// parkTimeout bounds the boot, agent handshake and warm-up of a pooled VM. Generous: the
	// VM runs niced (pooledNice) and a busy host gives it little CPU.
	parkTimeout = 5 * time.Minute
	// killWait bounds how long a holder waits for its QEMU to go after killing it.
	killWait = 10 * time.Second
	// defaultOpTimeout bounds an op whose request names no timeout.
	defaultOpTimeout = 30 * time.Second
	// pooledNice is the nice value of a pooled VM's QEMU. A refill starts when a VM is
	// handed out, that is when a pod is starting: at nice 0 the refill's boot and warm-up
	// would take half of a 2-core host from the very pod the pool exists for. Niced, pooled
	// VMs boot mostly with what the running pods leave; adopt restores nice 0. 10 rather
	// than 19: a CFS weight of 110 against 1024 still lets a refill progress (roughly a
	// tenth of a CPU) on a host whose pods keep every CPU busy.
	pooledNice = 10
)

// Config configures a holder process (Run).
type Config struct {
	// ID names the VM while it is pooled.
	ID string
	// Dir is the VM's directory (it must exist); ShareDir its 9p share (Dir/share).
	Dir      string
	ShareDir string
	// CPUs and MemoryMiB size the VM.
	CPUs      int
	MemoryMiB int
	// Factory boots the VM: the pool's base kind, direct or template (Main sets it).
	Factory factory.Factory `json:"-"`
	// Parent is the factory daemon's pid: while the VM is pooled the holder kills it when
	// that process exits.
	Parent int
	// Warm keeps the parked agent's connection for a warm-up (op warm: a throwaway
	// container, WARMUP), which the pool asks for once the VM is in the pool and its turn
	// comes: the pod's first container then costs what a later one does under TCG.
	// Without it op warm does nothing.
	Warm bool
}

// holder is the state of the process holding one VM.
type holder struct {
	cfg Config
	log *slog.Logger
	vm  hypervisor.VM

	// agent is the parked agent's connection, kept open for warm-ups until the VM is
	// handed out (nil then). warmMu orders a warm-up under way before a hand-out: the pod
	// daemon takes the connection only once the holder let go of it.
	warmMu sync.Mutex
	agent  *parkedAgent
	// handover is the parked agent's connection once the VM is handed out (detach): the
	// control and stream channels, open, for the owner to take (op agent).
	handover []*os.File

	mu      sync.Mutex
	info    wire.VMInfo
	owner   *proc         // parent while pooled, then the pod daemon that adopted the VM
	ownerCh chan struct{} // closed and replaced when owner changes
}

// Run boots one VM with cfg.Factory, parks its agent (READY and version handshake, over a
// connection it keeps for the warm-ups and then passes to the pod daemon it hands the VM
// to: op agent), reports "ok <VMInfo JSON>" on ready, and serves holder.sock in
// cfg.Dir until the VM is gone: it powers off, is killed on request, or its owner exits.
// ctx ending (SIGTERM) kills the VM. A VM that was never adopted takes its directory with
// it; an adopted one's directory is the pod's.
func Run(ctx context.Context, cfg Config, ready io.WriteCloser) (err error) {
	log := logging.G(ctx).With("holder", cfg.ID)
	report := func(line string) {
		if ready != nil {
			io.WriteString(ready, line+"\n")
			ready.Close()
			ready = nil
		}
	}
	defer func() {
		if err != nil {
			report("error: " + err.Error())
		}
	}()
	h := &holder{cfg: cfg, log: log, ownerCh: make(chan struct{})}
	parent, err := watchProcess(cfg.Parent)
	if err != nil {
		return fmt.Errorf("holder %s: %w", cfg.ID, err)
	}
	// The pidfd names the parent only if we are still its child: if it died before we
	// opened the pidfd, we were re-parented and the pid may be someone else's.
	if os.Getppid() != cfg.Parent {
		return fmt.Errorf("holder %s: the factory daemon (pid %d) is gone: %w", cfg.ID, cfg.Parent, errdefs.ErrUnavailable)
	}
	h.owner = parent

	sock := filepath.Join(cfg.Dir, Socket)
	os.Remove(sock)
	ln, err := sockets.Listen(sock)
	if err != nil {
		return fmt.Errorf("holder %s: %w", cfg.ID, err)
	}
	defer ln.Close()

	start := time.Now()
	bctx, cancel := context.WithTimeout(ctx, parkTimeout)
	vm, err := cfg.Factory.GetVM(bctx, factory.Request{ID: cfg.ID, Dir: cfg.Dir, ShareDir: cfg.ShareDir, CPUs: cfg.CPUs, MemoryMiB: cfg.MemoryMiB})
	if err == nil {
		h.vm = vm
		if err := renice(vm, pooledNice); err != nil {
			log.Warn("cannot lower the pooled VM's priority", "error", err)
		}
		h.agent, err = parkVM(bctx, vm)
		if err == nil && cfg.Warm {
			// What STARTPOD runs first, now: cheap, and a pod handed this VM before its
			// warm-up (a drained pool) starts without paying it (docs/factory.md).
			if _, werr := h.warm(bctx, agentproto.WarmupPod); werr != nil {
				log.Warn("warm-up of the pod's start failed", "error", werr)
			}
		}
		if err != nil {
			vm.Kill()
		}
	}
	cancel()
	if err != nil {
		os.RemoveAll(cfg.Dir)
		return fmt.Errorf("holder %s: %w", cfg.ID, err)
	}
	h.info = wire.VMInfo{ID: cfg.ID, Dir: cfg.Dir, QEMUPid: vm.Pid(), HolderPid: os.Getpid(), Accel: vm.Accel(), Restored: vm.Restored()}
	log.Info("vm ready in the pool", "qemu_pid", vm.Pid(), "took", time.Since(start), "restored", h.info.Restored)
	// Started niced (Factory.GetVM) for the refill's sake; from now on the holder's work is
	// a pod's: the hand-out's adopt and agent ops, then QEMU's reaping at the pod's end. At
	// nice 10 a loaded host delayed each by milliseconds. QEMU stays niced until adopt.
	if err := reniceSelf(0); err != nil {
		log.Warn("cannot restore the holder's priority", "error", err)
	}
	b, _ := json.Marshal(h.info)
	report("ok " + string(b))

	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go wire.ServeConn(conn, h.handle)
		}
	}()
	defer h.letGo()
	return h.wait(ctx)
}

// parkedAgent is the agent's connection as the holder parked it: the client of the
// warm-ups, over the VM's channels, which go to the pod daemon on hand-out.
type parkedAgent struct {
	client *agentclient.Client
	ch     *hypervisor.Channels
}

// parkVM is park; unit tests, whose VMs have no agent, replace it.
var parkVM = park

// park brings the new VM's agent to rest: READY (a cold boot) and the version handshake.
// It returns the connection, still open, for the warm-ups (warm) and then the pod daemon.
func park(ctx context.Context, vm hypervisor.VM) (*parkedAgent, error) {
	ch, err := vm.Channels(ctx)
	if err != nil {
		return nil, err
	}
	c := agentclient.New(ch, agentclient.Options{PodID: vm.ID(), Logf: func(format string, args ...any) {
		logging.G(ctx).Warn(fmt.Sprintf(format, args...))
	}})
	if !vm.Restored() {
		ready, err := c.WaitReady(ctx)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("park the agent (console: %s): %w", vm.ConsoleLog(), err)
		}
		logging.G(ctx).Debug("agent ready", "vm", vm.ID(), "boot_steps", ready.BootSteps)
		if err := hypervisor.SaveBootTranslations(ctx, vm); err != nil {
			logging.G(ctx).Warn("boot translations not saved: later boots translate as this one did", "vm", vm.ID(), "error", err)
		}
	}
	if _, err := c.Handshake(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("park the agent (console: %s): %w", vm.ConsoleLog(), err)
	}
	return &parkedAgent{client: c, ch: ch}, nil
}

// warm runs a warm-up of scope in the parked VM: WARMUP through the parked agent's
// connection, which stays open for the next one (the pod's start when parked, then the
// pool's op warm, light or full, and a full one after a light one) until the VM is handed
// out. A VM handed out, or held without cfg.Warm, is left as it is.
func (h *holder) warm(ctx context.Context, scope agentproto.WarmupScope) (factory.WarmResult, error) {
	h.warmMu.Lock()
	defer h.warmMu.Unlock()
	if h.agent == nil || !h.cfg.Warm {
		return factory.WarmResult{}, nil
	}
	c := h.agent.client
	start := time.Now()
	cpu0, cpuErr := procstat.CPUTime(h.vm.Pid())
	// The share device of this VM is the pod's that takes it (its directory is renamed
	// onto the pod's share): mounted now, STARTPOD finds it ready.
	req := agentproto.WarmupRequest{ShareTag: agentproto.ShareTag, Entropy: make([]byte, 64), Scope: scope}
	rand.Read(req.Entropy)
	if scope != agentproto.WarmupPod && h.cfg.ShareDir != "" {
		// The throwaway container's rootfs is made and removed here, in the share's host
		// directory, rather than by the guest through 9p (agentproto.MakeWarmupRootfs).
		dir := filepath.Join(h.cfg.ShareDir, agentproto.WarmupShareDir)
		if err := agentproto.MakeWarmupRootfs(filepath.Join(dir, "rootfs")); err != nil {
			h.log.Warn("cannot make the warm-up's rootfs in the share: the guest makes it", "error", err)
		} else {
			req.HostRootfs = true
		}
		defer os.RemoveAll(dir)
	}
	var w factory.WarmResult
	if err := c.Call(ctx, agentproto.MsgWarmup, req, &w.Guest); err != nil {
		return w, fmt.Errorf("holder %s: warm-up: %w", h.cfg.ID, err)
	}
	if cpu1, err := procstat.CPUTime(h.vm.Pid()); err == nil && cpuErr == nil {
		w.CPU = cpu1 - cpu0
	}
	h.log.Info("vm warmed up", "scope", scope, "took", time.Since(start), "qemu_cpu", w.CPU,
		"guest_create_ms", w.Guest.CreateMillis, "guest_total_ms", w.Guest.TotalMillis)
	return w, nil
}

// detach ends the holder's use of the parked agent's connection, once a warm-up under way
// ended, and keeps the connection itself open for the owner to take (op agent): the agent,
// idle between two frames (it sends nothing unasked while no process of the host runs),
// sees no disconnect, and the pod daemon's first command finds it serving. A reconnect
// costs STARTPOD the agent's wake-up on the host's connect (SIGIO), READY and the version
// handshake's round: ~4 ms idle (docs/performance.md, "Pooled run and bursts, stop 13").
// If the channels cannot be kept (not sockets), the connection is closed and the pod
// daemon dials.
func (h *holder) detach() {
	h.warmMu.Lock()
	defer h.warmMu.Unlock()
	a := h.agent
	if a == nil {
		return
	}
	h.agent = nil
	files, err := channelFiles(a.ch)
	if err != nil {
		h.log.Warn("cannot keep the agent's connection for the pod daemon: it will dial", "error", err)
	}
	// Closes the holder's descriptors only: the duplicates keep the connection.
	a.client.Close()
	h.handover = files
}

// takeHandover returns the parked agent's channels kept by detach (nil: none), the
// caller's from then on.
func (h *holder) takeHandover() []*os.File {
	h.warmMu.Lock()
	defer h.warmMu.Unlock()
	files := h.handover
	h.handover = nil
	return files
}

// letGo closes the parked agent's connection, whether the holder still uses it or kept it
// for its owner: the VM is gone, or its owner dials the agent instead (a pod daemon of an
// older runv, which asks for info and not for the connection).
func (h *holder) letGo() {
	h.warmMu.Lock()
	defer h.warmMu.Unlock()
	if h.agent != nil {
		h.agent.client.Close()
		h.agent = nil
	}
	closeFiles(h.handover)
	h.handover = nil
}

// channelFiles duplicates the descriptors of ch's control and stream channels.
func channelFiles(ch *hypervisor.Channels) ([]*os.File, error) {
	var files []*os.File
	for _, c := range []net.Conn{ch.Control, ch.Stream} {
		fc, ok := c.(interface{ File() (*os.File, error) })
		if !ok {
			closeFiles(files)
			return nil, fmt.Errorf("channel %T has no descriptor to pass", c)
		}
		f, err := fc.File()
		if err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("duplicate the agent's channel: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// wait returns once the VM is gone, killing it first if its owner exits or ctx ends.
func (h *holder) wait(ctx context.Context) error {
	for {
		h.mu.Lock()
		owner, changed := h.owner, h.ownerCh
		h.mu.Unlock()
		select {
		case <-h.vm.Done():
			h.cleanup()
			return nil
		case <-changed:
			continue
		case <-owner.done:
			h.log.Info("owner exited: killing the vm", "owner", owner.pid)
		case <-ctx.Done():
			h.log.Info("stopping: killing the vm")
		}
		h.vm.Kill()
		select {
		case <-h.vm.Done():
		case <-time.After(killWait):
			return fmt.Errorf("holder %s: qemu still running %s after SIGKILL", h.cfg.ID, killWait)
		}
		h.cleanup()
		return nil
	}
}

// cleanup removes what the holder owns once the VM is gone: the whole directory while the
// VM was pooled, only its socket once the directory is the pod's.
func (h *holder) cleanup() {
	h.mu.Lock()
	adopted, dir := h.info.Owner != 0, h.info.Dir
	h.mu.Unlock()
	if adopted {
		os.Remove(filepath.Join(dir, Socket))
		return
	}
	os.RemoveAll(dir)
}

func (h *holder) handle(conn net.Conn, req wire.Request) wire.Response {
	ctx, cancel := wire.OpContext(context.Background(), req, defaultOpTimeout)
	defer cancel()
	switch req.Op {
	case wire.OpInfo:
		h.mu.Lock()
		info := h.info
		h.mu.Unlock()
		if info.Owner != 0 {
			// An owner that asks for info dials the agent: it must find it free.
			h.letGo()
		}
		return wire.Response{VM: &info}
	case wire.OpAgent:
		h.mu.Lock()
		info := h.info
		h.mu.Unlock()
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			return wire.ErrResponse(fmt.Errorf("vm %s: op agent: not a unix socket: %w", h.cfg.ID, errdefs.ErrInvalidArgument))
		}
		pid, err := wire.PeerPid(uc)
		if err != nil {
			return wire.ErrResponse(fmt.Errorf("vm %s: op agent: who is asking: %w", h.cfg.ID, err))
		}
		if info.Owner == 0 || pid != info.Owner {
			return wire.ErrResponse(fmt.Errorf("vm %s: the agent's connection goes to the VM's owner (pid %d), not to pid %d: %w",
				h.cfg.ID, info.Owner, pid, errdefs.ErrFailedPrecondition))
		}
		return wire.Response{VM: &info, Files: h.takeHandover()}
	case wire.OpWarm:
		scope := agentproto.WarmupFull
		if req.Light {
			scope = agentproto.WarmupContainer
		}
		w, err := h.warm(ctx, scope)
		if err != nil {
			return wire.ErrResponse(err)
		}
		return wire.Response{Warmup: &w}
	case wire.OpAdopt:
		// A warm-up under way ends first; the connection is the pod daemon's next.
		h.detach()
		info, err := h.adopt(req.Pid, req.Dir)
		if err != nil {
			return wire.ErrResponse(err)
		}
		return wire.Response{VM: &info}
	case wire.OpGrow:
		hp, ok := h.vm.(hypervisor.Hotplugger)
		if !ok {
			return wire.ErrResponse(fmt.Errorf("vm %s cannot be hot-plugged (q35 booted with room to grow only): %w", h.cfg.ID, errdefs.ErrNotImplemented))
		}
		if req.CPUs > 0 {
			if err := hp.HotplugCPUs(ctx, req.CPUs); err != nil {
				return wire.ErrResponse(err)
			}
		}
		if req.MemoryMiB > 0 {
			if err := hp.HotplugMemory(ctx, req.MemoryMiB); err != nil {
				return wire.ErrResponse(err)
			}
		}
		return wire.Response{}
	case wire.OpShutdown:
		if err := h.vm.Shutdown(ctx); err != nil {
			return wire.ErrResponse(err)
		}
		return wire.Response{}
	case wire.OpKill:
		h.vm.Kill()
		return wire.Response{}
	}
	return wire.ErrResponse(fmt.Errorf("unknown op %q: %w", req.Op, errdefs.ErrInvalidArgument))
}

// adopt hands the VM to pod daemon pid: its directory moves onto dir (the pod's empty vm/
// directory; the share was moved already), and from now on the VM dies with that process,
// not with the factory daemon.
func (h *holder) adopt(pid int, dir string) (wire.VMInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.info.Owner != 0 {
		return wire.VMInfo{}, fmt.Errorf("vm %s was handed out already (to pid %d): %w", h.cfg.ID, h.info.Owner, errdefs.ErrFailedPrecondition)
	}
	if pid <= 0 || dir == "" {
		return wire.VMInfo{}, fmt.Errorf("adopt vm %s: no owner pid or directory: %w", h.cfg.ID, errdefs.ErrInvalidArgument)
	}
	owner, err := watchProcess(pid)
	if err != nil {
		return wire.VMInfo{}, fmt.Errorf("adopt vm %s: %w", h.cfg.ID, err)
	}
	// rename(2), not os.Rename: it replaces an empty directory.
	if err := unix.Rename(h.info.Dir, dir); err != nil {
		owner.release()
		return wire.VMInfo{}, fmt.Errorf("adopt vm %s: move %s to %s: %w", h.cfg.ID, h.info.Dir, dir, err)
	}
	if err := renice(h.vm, 0); err != nil {
		h.log.Warn("cannot restore the handed-out VM's priority", "error", err)
	}
	old := h.owner
	h.owner = owner
	close(h.ownerCh)
	h.ownerCh = make(chan struct{})
	h.info.Owner, h.info.Dir = pid, dir
	h.log.Info("vm handed out", "owner", pid, "dir", dir)
	old.release()
	return h.info, nil
}

// reniceSelf sets the nice value of every thread of this process (Linux's nice is per
// thread; the holder's were all created at the value its starter gave its first one).
func reniceSelf(nice int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("setpriority(thread %d, %d): %w", tid, nice, err))
		}
	}
	return errors.Join(errs...)
}

// renice sets the nice value of every thread of the VM's QEMU. QEMU runs in a process group
// of its own (hypervisor/qemu starts it so), and setpriority on a process group reaches every
// thread in it; on a pid it would reach the main thread only, not the vCPU threads. A fake VM
// without a process (pid 0 or less) is left alone.
func renice(vm hypervisor.VM, nice int) error {
	pid := vm.Pid()
	if pid <= 0 {
		return nil
	}
	if err := unix.Setpriority(unix.PRIO_PGRP, pid, nice); err != nil {
		return fmt.Errorf("setpriority(process group %d, %d): %w", pid, nice, err)
	}
	return nil
}
