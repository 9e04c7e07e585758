package cachesrv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
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

// HolderConfig configures a holder process (RunHolder).
type HolderConfig struct {
	// ID names the VM while it is pooled.
	ID string
	// Dir is the VM's directory (it must exist); ShareDir its 9p share (Dir/share).
	Dir      string
	ShareDir string
	// CPUs and MemoryMiB size the VM.
	CPUs      int
	MemoryMiB int
	// Factory boots the VM: the pool's base kind, direct or template.
	Factory factory.Factory
	// Parent is the factory daemon's pid: while the VM is pooled the holder kills it when
	// that process exits.
	Parent int
	// Warm runs a throwaway container in the VM before it joins the pool (WARMUP): the
	// pod's first container then costs what a later one does under TCG.
	Warm bool
}

// holder is the state of the process holding one VM.
type holder struct {
	cfg HolderConfig
	log *slog.Logger
	vm  hypervisor.VM

	mu      sync.Mutex
	info    VMInfo
	owner   *proc         // parent while pooled, then the pod daemon that adopted the VM
	ownerCh chan struct{} // closed and replaced when owner changes
}

// RunHolder boots one VM with cfg.Factory, parks its agent (READY and version handshake,
// then disconnects), reports "ok <VMInfo JSON>" on ready, and serves holder.sock in
// cfg.Dir until the VM is gone: it powers off, is killed on request, or its owner exits.
// ctx ending (SIGTERM) kills the VM. A VM that was never adopted takes its directory with
// it; an adopted one's directory is the pod's.
func RunHolder(ctx context.Context, cfg HolderConfig, ready io.WriteCloser) (err error) {
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

	sock := filepath.Join(cfg.Dir, HolderSocket)
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
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
		err = parkVM(bctx, vm, cfg.Warm)
		if err != nil {
			vm.Kill()
		}
	}
	cancel()
	if err != nil {
		os.RemoveAll(cfg.Dir)
		return fmt.Errorf("holder %s: %w", cfg.ID, err)
	}
	h.info = VMInfo{ID: cfg.ID, Dir: cfg.Dir, QEMUPid: vm.Pid(), HolderPid: os.Getpid(), Accel: vm.Accel(), Restored: factory.Restored(vm)}
	log.Info("vm ready in the pool", "qemu_pid", vm.Pid(), "took", time.Since(start), "restored", h.info.Restored)
	b, _ := json.Marshal(h.info)
	report("ok " + string(b))

	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveConn(conn, h.handle)
		}
	}()
	return h.wait(ctx)
}

// parkVM is park; unit tests, whose VMs have no agent, replace it.
var parkVM = park

// park brings the new VM's agent to rest: READY (a cold boot), the version handshake and,
// with warm, a warm-up container; then it disconnects, and the agent waits for the pod
// daemon to connect. A failed warm-up is only logged: the VM is as good as a cold one.
func park(ctx context.Context, vm hypervisor.VM, warm bool) error {
	ch, err := vm.Channels(ctx)
	if err != nil {
		return err
	}
	c := agentclient.New(ch, agentclient.Options{PodID: vm.ID(), Logf: func(format string, args ...any) {
		logging.G(ctx).Warn(fmt.Sprintf(format, args...))
	}})
	defer c.Close()
	if !factory.Restored(vm) {
		if err := c.WaitReady(ctx); err != nil {
			return fmt.Errorf("park the agent (console: %s): %w", vm.ConsoleLog(), err)
		}
	}
	if _, err := c.Handshake(ctx); err != nil {
		return fmt.Errorf("park the agent (console: %s): %w", vm.ConsoleLog(), err)
	}
	if warm {
		var w agentproto.Warmup
		start := time.Now()
		if err := c.Call(ctx, agentproto.MsgWarmup, nil, &w); err != nil {
			logging.G(ctx).Warn("warm-up failed; the VM joins the pool cold", "error", err)
		} else {
			logging.G(ctx).Info("vm warmed up", "took", time.Since(start), "guest_create_ms", w.CreateMillis, "guest_total_ms", w.TotalMillis)
		}
	}
	return nil
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
		os.Remove(filepath.Join(dir, HolderSocket))
		return
	}
	os.RemoveAll(dir)
}

func (h *holder) handle(_ net.Conn, req request) response {
	ctx, cancel := opContext(context.Background(), req, defaultOpTimeout)
	defer cancel()
	switch req.Op {
	case opInfo:
		h.mu.Lock()
		info := h.info
		h.mu.Unlock()
		return response{VM: &info}
	case opAdopt:
		info, err := h.adopt(req.Pid, req.Dir)
		if err != nil {
			return errResponse(err)
		}
		return response{VM: &info}
	case opGrow:
		hp, ok := h.vm.(hypervisor.Hotplugger)
		if !ok {
			return errResponse(fmt.Errorf("vm %s cannot be hot-plugged (q35 booted with room to grow only): %w", h.cfg.ID, errdefs.ErrNotImplemented))
		}
		if req.CPUs > 0 {
			if err := hp.HotplugCPUs(ctx, req.CPUs); err != nil {
				return errResponse(err)
			}
		}
		if req.MemoryMiB > 0 {
			if err := hp.HotplugMemory(ctx, req.MemoryMiB); err != nil {
				return errResponse(err)
			}
		}
		return response{}
	case opShutdown:
		if err := h.vm.Shutdown(ctx); err != nil {
			return errResponse(err)
		}
		return response{}
	case opKill:
		h.vm.Kill()
		return response{}
	}
	return errResponse(fmt.Errorf("unknown op %q: %w", req.Op, errdefs.ErrInvalidArgument))
}

// adopt hands the VM to pod daemon pid: its directory moves onto dir (the pod's empty vm/
// directory; the share was moved already), and from now on the VM dies with that process,
// not with the factory daemon.
func (h *holder) adopt(pid int, dir string) (VMInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.info.Owner != 0 {
		return VMInfo{}, fmt.Errorf("vm %s was handed out already (to pid %d): %w", h.cfg.ID, h.info.Owner, errdefs.ErrFailedPrecondition)
	}
	if pid <= 0 || dir == "" {
		return VMInfo{}, fmt.Errorf("adopt vm %s: no owner pid or directory: %w", h.cfg.ID, errdefs.ErrInvalidArgument)
	}
	owner, err := watchProcess(pid)
	if err != nil {
		return VMInfo{}, fmt.Errorf("adopt vm %s: %w", h.cfg.ID, err)
	}
	// rename(2), not os.Rename: it replaces an empty directory.
	if err := unix.Rename(h.info.Dir, dir); err != nil {
		owner.release()
		return VMInfo{}, fmt.Errorf("adopt vm %s: move %s to %s: %w", h.cfg.ID, h.info.Dir, dir, err)
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
