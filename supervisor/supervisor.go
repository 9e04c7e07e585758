// Package supervisor is the host side of one pod: it owns the pod's VM (obtained from a
// factory), talks to the guest agent, creates containers and processes in it, relays their
// stdio to the descriptors the clients handed over, and records events. `runv containerd`
// serves it over gRPC (server.go); the CLI is its client.
package supervisor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/network"
	"github.com/runv-project/runv/oci"
)

// guestAgent is what the supervisor needs from the host side of the agent protocol
// (implemented by agentclient).
type guestAgent interface {
	Call(ctx context.Context, t agentproto.MsgType, payload, reply any) error
	NextSeq() uint64
	// Watch registers interest in a process's exit before it can happen.
	Watch(container, process string, stdio agentproto.Stdio) (exitWaiter, error)
	Done() <-chan struct{}
	Err() error
	Close() error
}

// exitWaiter delivers one process's streams and exit.
type exitWaiter interface {
	Streams() (stdin io.WriteCloser, stdout, stderr io.ReadCloser)
	// Wait returns once the process exited and its output streams reached EOF.
	Wait(ctx context.Context) (agentproto.ProcessExit, error)
}

// Config configures a pod's supervisor.
type Config struct {
	PodID string
	// Dir is the pod directory: sockets, share/, vm/, events.log.
	Dir     string
	Factory factory.Factory
	// VM sizes the pod's VM (zero values: the factory's defaults).
	VM factory.Request
	// SizeFromSpec defers the boot until the pod's first container arrives and sizes the VM
	// from its spec (oci.VMSize), never below VM's size. The boot then starts a few
	// milliseconds later than at daemon start, which pooled and cloned VMs do not feel.
	SizeFromSpec bool
	// BootTimeout bounds VM start until the agent answered.
	BootTimeout time.Duration
	// SlowBootAfter is how long a boot waits for the agent before the daemon logs, at
	// warning, the step it waits in and what the VM shows (bootwatch.go). Zero: 15 s.
	SlowBootAfter time.Duration
	// PlaceVM, if set, puts the VM's process where the pod is accounted (the shim: the
	// pod's host cgroup). It runs once the factory handed the VM over, beside the agent's
	// connection and STARTPOD, and the pod is ready only after it returned; an error is
	// logged, the pod runs on.
	PlaceVM func(pid int) error
	// EndsWhenEmpty says the pod is closed once its last container is deleted (the pod
	// daemon): that container's record in the guest is not removed first, the VM's end
	// takes it (Delete).
	EndsWhenEmpty bool

	// connect reaches the VM's agent: connectAgent, or a fake agent in unit tests.
	connect func(ctx context.Context, vm hypervisor.VM, podID string, enter func(step string)) (guestAgent, error)
}

// Supervisor runs one pod.
type Supervisor struct {
	cfg    Config
	share  string
	events *eventLog

	ready   chan struct{} // closed when the VM is up and the pod started, or failed
	bootErr error
	// sized carries the VM request once the first container sized it (SizeFromSpec).
	sized     chan factory.Request
	sizeMu    sync.Mutex
	sizeDone  bool
	closing   chan struct{} // closed when Close begins: a boot still waiting gives up
	closingMu sync.Once
	vm        hypervisor.VM
	agent     guestAgent
	bootDur   time.Duration

	// netMu guards the pod's network: net mirrors its namespace (nil until
	// ConnectNetwork), netSent is what the guest was last told.
	netMu   sync.Mutex
	net     *network.Pod
	netSent agentproto.Network
	// fwd answers port forwards to the pod's loopback while the network is connected.
	fwd *network.PortForwarder

	mu         sync.Mutex
	containers map[string]*container
	everHad    bool
	// empty is closed when the last container was deleted.
	empty     chan struct{}
	emptyOnce sync.Once
	closeOnce sync.Once
	// endOnce ends the VM of a pod whose guest is empty (endEmptyVM): the last
	// container's Delete starts it, Close waits for it.
	endOnce sync.Once
	endErr  error
	endDur  time.Duration
}

// New prepares the pod directory and starts booting the VM in the background, so that the
// boot overlaps with the client connecting and sending its first request. ctx's logger names
// the pod already (logging.With(ctx, "pod", id): the pod daemon's and the shim's do).
func New(ctx context.Context, cfg Config) (*Supervisor, error) {
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 90 * time.Second
	}
	if cfg.SlowBootAfter == 0 {
		cfg.SlowBootAfter = defaultSlowBootAfter
	}
	if cfg.connect == nil {
		cfg.connect = connectAgent
	}
	s := &Supervisor{
		cfg:        cfg,
		share:      ShareDir(cfg.Dir),
		ready:      make(chan struct{}),
		sized:      make(chan factory.Request, 1),
		closing:    make(chan struct{}),
		containers: map[string]*container{},
		empty:      make(chan struct{}),
	}
	for _, d := range []string{s.share, VMDir(cfg.Dir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("pod %s: %w", cfg.PodID, err)
		}
	}
	ev, err := openEventLog(filepath.Join(cfg.Dir, "events.log"))
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", cfg.PodID, err)
	}
	s.events = ev
	go s.boot(context.WithoutCancel(ctx))
	return s, nil
}

// VMDir is the directory of the VM of the pod in podDir (QEMU's files, sockets and logs).
func VMDir(podDir string) string { return filepath.Join(podDir, "vm") }

// ShareDir is the directory the VM of the pod in podDir shares with its guest over 9p.
func ShareDir(podDir string) string { return filepath.Join(podDir, "share") }

// EverHadContainer reports whether a container was ever created in the pod: a daemon
// that never got one after a while lost its client.
func (s *Supervisor) EverHadContainer() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.everHad
}

// SizeVM sizes the pod's VM from its first container's spec (see oci.VMSize) and lets a
// boot waiting for it go. Only the first call counts; without Config.SizeFromSpec it does
// nothing.
func (s *Supervisor) SizeVM(spec *specs.Spec) error {
	if !s.cfg.SizeFromSpec {
		return nil
	}
	s.sizeMu.Lock()
	defer s.sizeMu.Unlock()
	if s.sizeDone {
		return nil
	}
	cpus, mem, err := oci.VMSize(spec)
	if err != nil {
		// This container is refused; the next one may size the VM instead.
		return fmt.Errorf("pod %s: size the VM: %w", s.cfg.PodID, err)
	}
	s.sized <- SizedFor(s.cfg.VM, factory.Request{CPUs: cpus, MemoryMiB: mem}) // buffered, sent once
	s.sizeDone = true
	return nil
}

// SizedFor is the VM size of a pod whose first container asks for first (oci.VMSize),
// never below size (the pods' default). Every way of sizing a pod's VM goes through it
// (SizeVM at the first Create; the pod daemon told the size at its start, and the VM
// prefetched for it), so that they agree.
func SizedFor(size, first factory.Request) factory.Request {
	size.CPUs, size.MemoryMiB = max(size.CPUs, first.CPUs), max(size.MemoryMiB, first.MemoryMiB)
	return size
}

func (s *Supervisor) boot(ctx context.Context) {
	defer close(s.ready)
	req := s.cfg.VM
	if s.cfg.SizeFromSpec {
		select {
		case req = <-s.sized:
		case <-s.closing:
			s.bootErr = fmt.Errorf("pod %s: closed before its first container: %w", s.cfg.PodID, errdefs.ErrUnavailable)
			return
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout)
	defer cancel()
	log := logging.G(ctx)
	start := time.Now()
	req.ID = s.cfg.PodID
	req.Dir = VMDir(s.cfg.Dir)
	req.ShareDir = s.share
	vm, err := s.cfg.Factory.GetVM(ctx, req)
	if err != nil {
		s.bootErr = fmt.Errorf("pod %s: start VM: %w", s.cfg.PodID, err)
		log.Error("start VM", "error", err)
		return
	}
	log.Debug("boot: got VM", "factory", s.cfg.Factory.Name(), "duration", time.Since(start),
		"cpus", req.CPUs, "memory_mib", req.MemoryMiB, "restored", vm.Restored(), "grown", vm.Grown())
	placed := s.placeVM(ctx, vm.Pid())
	defer func() { <-placed }() // also on failure: before ready is closed
	watch := newBootWatch(vm, s.cfg.SlowBootAfter)
	go watch.run(ctx)
	defer watch.stop(ctx)
	step := time.Now()
	watch.enter(ctx, "connecting to the agent's channels")
	agent, err := s.cfg.connect(ctx, vm, s.cfg.PodID, func(step string) { watch.enter(ctx, step) })
	if err == nil {
		log.Debug("boot: agent connected", "duration", time.Since(step))
		watch.enter(ctx, "STARTPOD")
		step = time.Now()
		err = agent.Call(ctx, agentproto.MsgStartPod, agentproto.Pod{
			ID:           s.cfg.PodID,
			Hostname:     s.cfg.PodID,
			ShareTag:     agentproto.ShareTag,
			TimeUnixNano: time.Now().UnixNano(),
			Entropy:      podEntropy(vm.Restored()),
		}, nil)
		if err != nil {
			agent.Close()
			err = fmt.Errorf("start pod in guest: %w", err)
		} else {
			log.Debug("boot: pod started in guest", "duration", time.Since(step))
		}
	}
	if err == nil && vm.Grown() {
		// Hot-plugged CPUs stay offline until the guest onlines them.
		watch.enter(ctx, "ONLINECPUMEM")
		step = time.Now()
		var got agentproto.OnlineCPUMemResult
		err = agent.Call(ctx, agentproto.MsgOnlineCPUMem, agentproto.OnlineCPUMem{CPUs: req.CPUs, MemoryMiB: req.MemoryMiB}, &got)
		if err != nil {
			agent.Close()
			err = fmt.Errorf("online hot-plugged CPUs and memory in guest: %w", err)
		} else {
			log.Debug("boot: hot-plugged CPUs and memory online", "cpus", got.CPUs, "memory_mib", got.MemoryMiB, "duration", time.Since(step))
		}
	}
	if err != nil {
		vm.Kill()
		<-vm.Done()
		s.bootErr = fmt.Errorf("pod %s: %w (guest console: %s)", s.cfg.PodID, err, vm.ConsoleLog())
		logging.G(ctx).Error("boot", "error", err, "console", vm.ConsoleLog())
		return
	}
	<-placed
	s.vm, s.agent, s.bootDur = vm, agent, time.Since(start)
	logging.G(ctx).Info("pod ready", "vm_pid", vm.Pid(), "accel", vm.Accel(), "boot", s.bootDur)
	go s.watchVM(ctx)
}

// podEntropy is the host randomness STARTPOD gives a guest: 64 bytes for a VM restored
// from a snapshot (a template's clone, or a VM parked by a holder, which may be one), whose
// RNG would otherwise go on from its template's state, the same in every clone; none for a
// guest that booted here. That guest's CRNG was seeded at its boot from its own virtio-rng
// (the host's /dev/urandom) and is ready before its agent runs (TestRunGuestRandomReady),
// and crediting and reseeding it again was ~130 translated blocks of STARTPOD's (the ioctls,
// the base64 decoding), ~1 ms of every direct boot under TCG.
func podEntropy(restored bool) []byte {
	if !restored {
		return nil
	}
	b := make([]byte, 64)
	rand.Read(b)
	return b
}

// guestEmpty reports whether every container of the pod was deleted, and none is being
// created: nothing of the pod's runs in the guest any more.
func (s *Supervisor) guestEmpty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.everHad && len(s.containers) == 0
}

// endEmptyVM ends the VM of a pod with nothing left in its guest, once. Nothing runs there
// and nothing there is the host's to save (the share is 9p with cache=mmap: every write
// reached the host when it returned, a shared mapping's pages when its process exited; the
// VM has no disk): DESTROYPOD's stop, unmount and sync would only cost its round trip
// (7-10 ms), so QEMU is killed at once. It returns once the VM is gone.
func (s *Supervisor) endEmptyVM() error {
	s.endOnce.Do(func() {
		start := time.Now()
		s.agent.Close()
		s.endErr = s.vm.Kill()
		s.endDur = time.Since(start)
	})
	return s.endErr
}

// stopVM ends the pod's VM. A guest that acknowledged DESTROYPOD has nothing left to lose
// (no process runs, the share is unmounted, everything is synced; it has no disk), so QEMU
// is stopped at once: waiting for the guest's own power-off would add 30-50 ms of guest
// and QEMU time to every pod's end (docs/performance.md, "Direct boot"). Any other guest
// is asked to power off first.
func (s *Supervisor) stopVM(ctx context.Context, destroyed bool) error {
	if destroyed {
		return s.vm.Kill()
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.vm.Shutdown(sctx)
}

// placeVM runs Config.PlaceVM for the VM's process in the background; the channel is
// closed once it is done.
func (s *Supervisor) placeVM(ctx context.Context, pid int) <-chan struct{} {
	done := make(chan struct{})
	if s.cfg.PlaceVM == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		start := time.Now()
		if err := s.cfg.PlaceVM(pid); err != nil {
			logging.G(ctx).Warn("the VM is not where the pod is accounted", "vm_pid", pid, "error", err)
			return
		}
		logging.G(ctx).Debug("boot: VM placed", "vm_pid", pid, "duration", time.Since(start))
	}()
	return done
}

// watchVM turns the VM's death into the death of every process in it.
func (s *Supervisor) watchVM(ctx context.Context) {
	select {
	case <-s.vm.Done():
	case <-s.agent.Done():
	}
	s.mu.Lock()
	live := len(s.containers)
	s.mu.Unlock()
	if live > 0 {
		logging.G(ctx).Warn("VM or agent went away", "error", s.agent.Err())
		s.events.publish(Event{Type: EventVMExit, Message: "VM exited"})
	}
}

// waitReady waits for the VM to be up.
func (s *Supervisor) waitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return s.bootErr
	case <-ctx.Done():
		return fmt.Errorf("pod %s: waiting for the VM: %w", s.cfg.PodID, ctx.Err())
	}
}

// Empty is closed when the pod's last container has been deleted.
func (s *Supervisor) Empty() <-chan struct{} { return s.empty }

// Info describes the pod.
func (s *Supervisor) Info() PodInfo {
	info := PodInfo{ID: s.cfg.PodID, DaemonPid: os.Getpid(), Factory: s.cfg.Factory.Name()}
	select {
	case <-s.ready:
		if s.vm != nil {
			info.VMPid, info.Accel, info.Boot = s.vm.Pid(), s.vm.Accel(), s.bootDur
		}
	default:
	}
	s.mu.Lock()
	for id := range s.containers {
		info.Containers = append(info.Containers, id)
	}
	s.mu.Unlock()
	return info
}

// PodInfo describes a pod.
type PodInfo struct {
	ID         string
	DaemonPid  int
	VMPid      int
	Accel      string
	Factory    string
	Containers []string
	Boot       time.Duration
}

// Close stops every process, powers the VM off and releases the share. It is idempotent.
func (s *Supervisor) Close(ctx context.Context) error {
	var errs []error
	s.closingMu.Do(func() { close(s.closing) })
	s.closeOnce.Do(func() {
		<-s.ready
		start := time.Now()
		var destroyDur, vmDur time.Duration
		destroyed, ended := false, false
		if s.agent != nil && s.guestEmpty() {
			ended = true
			if err := s.endEmptyVM(); err != nil {
				errs = append(errs, fmt.Errorf("stop VM: %w", err))
			}
			vmDur = s.endDur
		} else if s.agent != nil {
			// The agent ACKs DESTROYPOD once everything in the guest stopped, the share is
			// unmounted and synced, then powers off.
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := s.agent.Call(dctx, agentproto.MsgDestroyPod, nil, nil)
			if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
				logging.G(ctx).Warn("destroy pod in guest", "error", err)
			}
			cancel()
			s.agent.Close()
			destroyed = err == nil
			destroyDur = time.Since(start)
		}
		if s.vm != nil && !ended {
			step := time.Now()
			if err := s.stopVM(ctx, destroyed); err != nil {
				errs = append(errs, fmt.Errorf("stop VM: %w", err))
			}
			vmDur = time.Since(step)
		}
		s.mu.Lock()
		for _, c := range s.containers {
			c.markStopped(agentproto.ProcessExit{ExitCode: 137, Signal: 9, Error: "pod stopped"})
		}
		s.mu.Unlock()
		// After the VM: what is left is runv's filters and qdiscs, and the taps that were
		// moved into the pod's namespace (persistent: they outlive QEMU, hypervisor/qemu nic.go).
		if err := s.closeNetwork(); err != nil {
			errs = append(errs, err)
		}
		if err := mounts.UnmountUnder(s.share); err != nil {
			errs = append(errs, err)
		}
		s.events.close()
		logging.G(ctx).Debug("pod stopped", "destroy_in_guest", destroyDur, "stop_vm", vmDur, "duration", time.Since(start))
	})
	return errors.Join(errs...)
}
