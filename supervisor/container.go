package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
	"github.com/runv-project/runv/api/ocispec"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

// container is one container of the pod, as the daemon sees it.
type container struct {
	id      string
	bundle  string
	created time.Time

	mu        sync.Mutex
	status    string
	guestPid  int
	processes map[string]*process
	// pausedFrom is the status a paused container returns to on resume: a created
	// container can be paused too, as with runc.
	pausedFrom string
	// rootfs is the container's rootfs as shared with the guest (a host path), and
	// mountDests the destinations of its spec's mounts: what an exec's program hint is
	// found with (programHint).
	rootfs     string
	mountDests []string
	// mayMount is set once a process of the container may have changed its mounts (one
	// started with CAP_SYS_ADMIN in its bounding set): its mounts are then no longer
	// the spec's, and no exec gets a program hint any more.
	mayMount bool
}

// process is one process of a container (its init or an exec).
type process struct {
	id       string
	guestPid int
	// args is the command line the process was started with (for `runv ps`).
	args []string
	// done is closed once the exit is known and the output was delivered to the client.
	done chan struct{}
	// stdin is the client's input stream (nil: none); stdinDone is closed once the relay
	// stopped copying it and ended the process's stdin.
	stdin     io.Closer
	stdinDone <-chan struct{}
	exit      agentproto.ProcessExit
	once      sync.Once
}

func (p *process) finish(e agentproto.ProcessExit) {
	p.once.Do(func() {
		p.exit = e
		close(p.done)
	})
}

// markStopped records the end of every process of c.
func (c *container) markStopped(e agentproto.ProcessExit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status = state.StatusStopped
	for _, p := range c.processes {
		p.finish(e)
	}
}

// CreateRequest asks for a new container.
type CreateRequest struct {
	ID     string
	Bundle string
	Spec   *specs.Spec
	// Stdio is the init process's host streams; the supervisor owns them from here on,
	// also when Create fails.
	Stdio Stdio
	Rows  uint16
	Cols  uint16
	// Sandbox is the pod container whose namespaces this one joins ("": none, a container
	// that only shares the VM). Which namespaces those are in the guest, the agent decides.
	Sandbox string
	// Start asks the agent to start the container with its creation, in one round trip
	// (agentproto.Container.Start); the container is then running (or already stopped)
	// when Create returns. An agent of an older runv only creates it: it is then created,
	// and Start starts it.
	Start bool
}

func (s *Supervisor) lookup(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q is not in pod %s: %w", id, s.cfg.PodID, errdefs.ErrNotFound)
	}
	return c, nil
}

// Create creates a container: shares its rootfs with the guest and has the agent create it,
// with its init process waiting to be started.
func (s *Supervisor) Create(ctx context.Context, req CreateRequest) (pid int, err error) {
	ctx = logging.With(ctx, "container", req.ID)
	files := req.Stdio
	defer files.closeOnError(&err)
	if err := state.ValidateID(req.ID); err != nil {
		return 0, err
	}
	if req.Spec == nil || req.Spec.Process == nil {
		return 0, fmt.Errorf("container %q: config.json has no process: %w", req.ID, errdefs.ErrInvalidArgument)
	}
	if err := CheckHostNamespaces(req.ID, req.Spec); err != nil {
		return 0, err
	}
	c := &container{id: req.ID, bundle: req.Bundle, created: time.Now(), status: state.StatusCreating, processes: map[string]*process{}}
	s.mu.Lock()
	if _, dup := s.containers[req.ID]; dup {
		s.mu.Unlock()
		return 0, fmt.Errorf("container %q already exists in pod %s: %w", req.ID, s.cfg.PodID, errdefs.ErrAlreadyExists)
	}
	s.containers[req.ID] = c
	s.everHad = true
	s.mu.Unlock()

	pid, started, err := s.create(ctx, c, req, files)
	if err != nil {
		s.mu.Lock()
		delete(s.containers, req.ID)
		s.mu.Unlock()
		s.maybeEmpty()
		return 0, err
	}
	s.events.publish(Event{Type: EventCreate, Container: req.ID})
	if started {
		s.events.publish(Event{Type: EventStart, Container: req.ID})
	}
	return pid, nil
}

// create has the agent create the container (and start it, with req.Start and an agent
// that can): its guest pid, and whether it was started.
func (s *Supervisor) create(ctx context.Context, c *container, req CreateRequest, files Stdio) (int, bool, error) {
	if err := s.waitReady(ctx); err != nil {
		return 0, false, err
	}
	guestSpec, err := shareContainer(s.share, req.ID, req.Bundle, req.Spec)
	if err != nil {
		return 0, false, err
	}
	// The agent decides the container's namespaces in the guest (api/convert/spec.go,
	// guestNamespaces); the host's paths mean nothing there.
	var sharePID bool
	if guestSpec.Linux != nil {
		linux := *guestSpec.Linux
		linux.Namespaces, sharePID = ocispec.GuestNamespaces(linux.Namespaces)
		guestSpec.Linux = &linux
	}
	terminal := req.Spec.Process.Terminal
	rootfs, member := req.ID+"/rootfs", req.Sandbox != ""
	// The create path's conversion, done here for a spec that needs nothing of the guest's:
	// a cold guest's first container then does not translate it (api/convert).
	converted, why := convert.ForGuest(req.ID, rootfs, guestSpec, member)
	if converted == nil {
		logging.G(ctx).Debug("the guest converts the spec", "container", req.ID, "why", why)
	}
	start := time.Now()
	p, started, err := s.startProcess(ctx, c, agentproto.InitProcessID, req.Spec.Process.Args, files, terminal, func(io agentproto.Stdio) (agentproto.MsgType, any) {
		return agentproto.MsgNewContainer, agentproto.Container{
			ID: req.ID, Rootfs: rootfs, Spec: guestSpec, IO: io,
			ConsoleRows: req.Rows, ConsoleCols: req.Cols, Member: member, SharePID: sharePID,
			Start: req.Start, Converted: converted,
		}
	})
	if err != nil {
		unshareContainer(s.share, req.ID)
		return 0, false, err
	}
	logging.G(ctx).Debug("container created in the guest", "duration", time.Since(start), "started", started.Started)
	c.mu.Lock()
	c.rootfs = filepath.Join(s.share, req.ID, "rootfs")
	c.mayMount = mayMount(req.Spec.Process)
	for _, m := range guestSpec.Mounts {
		c.mountDests = append(c.mountDests, m.Destination)
	}
	c.guestPid = started.Pid
	if c.status == state.StatusCreating {
		c.status = state.StatusCreated
		if started.Started {
			c.status = state.StatusRunning
		}
	}
	c.mu.Unlock()
	go func() {
		<-p.done
		c.mu.Lock()
		c.status = state.StatusStopped
		c.mu.Unlock()
	}()
	return started.Pid, started.Started, nil
}

// startProcess wires a process's stdio to the host descriptors, sends the command that
// creates it, and arranges for its exit to be recorded once its output has been delivered.
func (s *Supervisor) startProcess(ctx context.Context, c *container, procID string, args []string, files Stdio, terminal bool,
	command func(agentproto.Stdio) (agentproto.MsgType, any)) (*process, agentproto.ProcessStarted, error) {
	io := agentproto.Stdio{Stdio: s.agent.NextSeq(), NoStdin: files.Stdin == nil}
	if !terminal {
		io.Stderr = s.agent.NextSeq()
	}
	w, err := s.agent.Watch(c.id, procID, io)
	if err != nil {
		return nil, agentproto.ProcessStarted{}, fmt.Errorf("container %q process %q: %w", c.id, procID, err)
	}
	p := &process{id: procID, args: args, done: make(chan struct{})}
	c.mu.Lock()
	if _, dup := c.processes[procID]; dup {
		c.mu.Unlock()
		return nil, agentproto.ProcessStarted{}, fmt.Errorf("container %q already has a process %q: %w", c.id, procID, errdefs.ErrAlreadyExists)
	}
	c.processes[procID] = p
	c.mu.Unlock()

	t, payload := command(io)
	var started agentproto.ProcessStarted
	callStart := time.Now()
	if err := s.agent.Call(ctx, t, payload, &started); err != nil {
		c.mu.Lock()
		delete(c.processes, procID)
		c.mu.Unlock()
		return nil, started, err // the client's error names the pod and the command
	}
	p.guestPid = started.Pid
	logging.G(ctx).Debug("process started", "process", procID, "command", t, "agent", time.Since(callStart))
	if procID != agentproto.InitProcessID {
		// Logged before anything can report its exit.
		s.events.publish(Event{Type: EventExec, Container: c.id, Process: procID})
	}
	relayed, stdinDone := files.relay(w.Streams())
	c.mu.Lock()
	p.stdin, p.stdinDone = files.Stdin, stdinDone
	c.mu.Unlock()
	go func() {
		exit, err := w.Wait(context.Background())
		if err != nil {
			exit = agentproto.ProcessExit{ExitCode: 137, Signal: int(syscall.SIGKILL), Error: fmt.Sprintf("lost the process: %v", err)}
		}
		<-relayed
		logging.G(ctx).Debug("process exited", "process", procID, "exit_code", exit.ExitCode, "error", exit.Error, "since_command", time.Since(callStart))
		// The event is logged before Wait can return: whatever a client does once its
		// process exited (delete, the next exec) comes after the exit in the log.
		s.events.publish(Event{Type: EventExit, Container: c.id, Process: procID, ExitCode: exit.ExitCode, Message: exit.Error})
		p.finish(exit)
	}()
	return p, started, nil
}

// Start runs a created container's init process.
func (s *Supervisor) Start(ctx context.Context, id string) error {
	c, err := s.lookup(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	st := c.status
	c.mu.Unlock()
	if st != state.StatusCreated {
		return fmt.Errorf("container %q is %s, not created: only a created container can be started: %w", id, st, errdefs.ErrFailedPrecondition)
	}
	start := time.Now()
	if err := s.agent.Call(ctx, agentproto.MsgStartContainer, agentproto.ContainerRef{Container: id}, nil); err != nil {
		return fmt.Errorf("start container %q: %w", id, err)
	}
	logging.G(ctx).Debug("container started in the guest", "container", id, "duration", time.Since(start))
	c.mu.Lock()
	if c.status == state.StatusCreated {
		c.status = state.StatusRunning
	}
	c.mu.Unlock()
	s.events.publish(Event{Type: EventStart, Container: id})
	return nil
}

// ExecRequest asks for an additional process in a running container.
type ExecRequest struct {
	ID      string
	Process string
	Spec    *specs.Process
	// Stdio is the process's host streams; the supervisor owns them from here on.
	Stdio Stdio
	Rows  uint16
	Cols  uint16
}

// Exec starts an additional process.
func (s *Supervisor) Exec(ctx context.Context, req ExecRequest) (pid int, err error) {
	files := req.Stdio
	defer files.closeOnError(&err)
	c, err := s.lookup(req.ID)
	if err != nil {
		return 0, err
	}
	if req.Spec == nil || len(req.Spec.Args) == 0 {
		return 0, fmt.Errorf("exec in container %q: the process has no args: %w", req.ID, errdefs.ErrInvalidArgument)
	}
	// As runc: a created container takes execs too (they join its namespaces); a paused
	// one cannot start anything in its frozen cgroup, a stopped one has nothing to join.
	st := c.state()
	c.mu.Lock()
	c.mayMount = c.mayMount || mayMount(req.Spec)
	hinted, rootfs, mountDests := !c.mayMount, c.rootfs, c.mountDests
	c.mu.Unlock()
	switch st.Status {
	case state.StatusCreated, state.StatusRunning:
	case state.StatusPaused:
		return 0, fmt.Errorf("cannot exec in container %q: cannot exec in a paused container (resume it first): %w", req.ID, errdefs.ErrFailedPrecondition)
	case state.StatusStopped:
		return 0, fmt.Errorf("cannot exec in container %q: cannot exec in a stopped container: %w", req.ID, errdefs.ErrFailedPrecondition)
	default:
		return 0, fmt.Errorf("cannot exec in container %q: it is %s: %w", req.ID, st.Status, errdefs.ErrFailedPrecondition)
	}
	// Looked up in the rootfs (host I/O) only for an exec that goes ahead, and outside the
	// container's lock (rootfs and mountDests are set once, at create).
	hint := ""
	if hinted {
		hint = programHint(rootfs, mountDests, req.Spec)
	}
	_, started, err := s.startProcess(ctx, c, req.Process, req.Spec.Args, files, req.Spec.Terminal, func(io agentproto.Stdio) (agentproto.MsgType, any) {
		return agentproto.MsgExecCmd, agentproto.ExecProcess{Container: req.ID, ID: req.Process, Process: req.Spec, IO: io, ConsoleRows: req.Rows, ConsoleCols: req.Cols, ProgramHint: hint}
	})
	if err != nil {
		return 0, err
	}
	return started.Pid, nil
}

func procID(p string) string {
	if p == "" {
		return agentproto.InitProcessID
	}
	return p
}

// Signal delivers a signal to a process (or all processes) of a container.
func (s *Supervisor) Signal(ctx context.Context, id, proc string, sig int, all bool) error {
	c, err := s.lookup(id)
	if err != nil {
		return err
	}
	proc = procID(proc)
	c.mu.Lock()
	p, ok := c.processes[proc]
	st := c.status
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("container %q has no process %q: %w", id, proc, errdefs.ErrNotFound)
	}
	select {
	case <-p.done:
		if all {
			// As runc: signalling every process of a container that has none left is
			// done (containerd's task delete sends kill --all after every stop).
			return nil
		}
		if proc == agentproto.InitProcessID || st == state.StatusStopped {
			return fmt.Errorf("container %q is not running: %w", id, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("process %q of container %q is not running: %w", proc, id, errdefs.ErrFailedPrecondition)
	default:
	}
	if err := s.agent.Call(ctx, agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: id, Process: proc, Signal: sig, All: all}, nil); err != nil {
		select {
		case <-s.agent.Done():
			// The VM is gone and every process with it; their ends are being recorded
			// (watchVM). Not an error of the caller's: `delete --force` right after a
			// guest crash goes on to wait for the end.
			return fmt.Errorf("container %q is not running: its VM exited: %w", id, errdefs.ErrFailedPrecondition)
		default:
		}
		return err
	}
	return nil
}

// GuestKillTimeout bounds how long the host waits for the guest to carry out a SIGKILL
// (well under a second, seconds under heavy load) or to remove a stopped container, before
// it takes the guest as one that stopped answering.
const GuestKillTimeout = 20 * time.Second

// Kill sends SIGKILL to a process (all: to every process of its container) and waits until
// the process is dead. A guest that has not carried the kill out within GuestKillTimeout
// (hung, or hostile) has its VM ended instead, which kills every process of the pod: a
// SIGKILL must end what it was sent to whatever the guest does, and clients (containerd's
// kill and forced delete, the CRI's stop) wait for that end. A process that has already
// exited answers an error wrapping ErrFailedPrecondition.
func (s *Supervisor) Kill(ctx context.Context, id, proc string, all bool) error {
	kctx, cancel := context.WithTimeout(ctx, GuestKillTimeout)
	defer cancel()
	err := s.Signal(kctx, id, proc, int(syscall.SIGKILL), all)
	if err == nil {
		_, err = s.Wait(kctx, id, proc)
	}
	if err == nil || kctx.Err() == nil || ctx.Err() != nil {
		// Done, refused for a reason of its own, or the caller gave up.
		return err
	}
	logging.G(ctx).Warn("the guest did not carry out a SIGKILL in time: ending the pod's VM",
		"container", id, "process", procID(proc), "after", GuestKillTimeout, "error", err)
	s.endVM()
	// The VM's end ends every process in it (watchVM and each process's watcher).
	wctx, wcancel := context.WithTimeout(ctx, GuestKillTimeout)
	defer wcancel()
	if _, err := s.Wait(wctx, id, proc); err != nil {
		return fmt.Errorf("container %q process %q: not recorded as ended after its VM was killed: %w", id, procID(proc), err)
	}
	return nil
}

// endVM kills the pod's VM at once.
func (s *Supervisor) endVM() {
	select {
	case <-s.ready:
	default:
		return
	}
	if s.vm != nil {
		s.vm.Kill()
	}
}

// Wait blocks until the process exited and its output was delivered.
func (s *Supervisor) Wait(ctx context.Context, id, proc string) (agentproto.ProcessExit, error) {
	c, err := s.lookup(id)
	if err != nil {
		return agentproto.ProcessExit{}, err
	}
	proc = procID(proc)
	c.mu.Lock()
	p, ok := c.processes[proc]
	c.mu.Unlock()
	if !ok {
		return agentproto.ProcessExit{}, fmt.Errorf("container %q has no process %q: %w", id, proc, errdefs.ErrNotFound)
	}
	select {
	case <-p.done:
		return p.exit, nil
	case <-ctx.Done():
		return agentproto.ProcessExit{}, ctx.Err()
	}
}

// ContainerState is a container's live state.
type ContainerState struct {
	ID       string
	Status   string
	GuestPid int
	ExitCode int
	Created  time.Time
}

// State reports a container's status.
func (s *Supervisor) State(id string) (ContainerState, error) {
	c, err := s.lookup(id)
	if err != nil {
		return ContainerState{}, err
	}
	return c.state(), nil
}

// state is the container's live state: stopped once its init exited.
func (c *container) state() ContainerState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := ContainerState{ID: c.id, Status: c.status, GuestPid: c.guestPid, Created: c.created}
	if p, ok := c.processes[agentproto.InitProcessID]; ok {
		select {
		case <-p.done:
			st.Status = state.StatusStopped
			st.ExitCode = p.exit.ExitCode
		default:
		}
	}
	return st
}

// Delete removes a container that is not running. A created container is killed first, as
// runc does. The pod is emptied (and the daemon exits) after its last container.
func (s *Supervisor) Delete(ctx context.Context, id string) error {
	c, err := s.lookup(id)
	if err != nil {
		return err
	}
	st := c.state()
	switch st.Status {
	case state.StatusRunning, state.StatusPaused:
		return fmt.Errorf("cannot delete container %q: it is %s; stop it first (runv kill) or use --force: %w", id, st.Status, errdefs.ErrFailedPrecondition)
	case state.StatusCreated:
		if err := s.Kill(ctx, id, "", true); err != nil {
			if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				return fmt.Errorf("delete created container %q: %w", id, err)
			}
			// It ended meanwhile (or with its VM): its end is being recorded.
			if _, err := s.Wait(ctx, id, ""); err != nil {
				return fmt.Errorf("delete created container %q: %w", id, err)
			}
		}
	}
	if s.takeLast(c) {
		// The pod ends with this container: its record in the guest goes with the VM,
		// whose end starts now. The share's mounts (the rootfs's bind among them) go
		// before the answer, not with the pod's end: once `runv run` or `runv delete`
		// returned, the state root holds no mount, and a caller that removes it at once
		// cannot reach the bundle's rootfs through the bind (1-5 ms of the answer).
		go s.endEmptyVM()
		if err := mounts.UnmountUnder(s.share); err != nil {
			logging.G(ctx).Warn("the pod's share stays mounted until the pod ends", "container", id, "error", err)
		}
		s.events.publish(Event{Type: EventDelete, Container: id})
		s.maybeEmpty()
		return nil
	}
	s.removeInGuest(ctx, id)
	if err := unshareContainer(s.share, id); err != nil {
		return fmt.Errorf("delete container %q: release its rootfs: %w", id, err)
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	s.events.publish(Event{Type: EventDelete, Container: id})
	s.maybeEmpty()
	return nil
}

// removeInGuest removes the guest's record of a stopped container (REMOVECONTAINER). It
// is bounded: that record is all that is left of the container, and a guest that stopped
// answering must not hold the delete.
func (s *Supervisor) removeInGuest(ctx context.Context, id string) {
	if s.agent == nil {
		return
	}
	select {
	case <-s.agent.Done():
		return
	default:
	}
	rctx, cancel := context.WithTimeout(ctx, GuestKillTimeout)
	defer cancel()
	start := time.Now()
	err := s.agent.Call(rctx, agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: id}, nil)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		logging.G(ctx).Warn("remove container in guest", "container", id, "error", err)
		return
	}
	logging.G(ctx).Debug("container removed in the guest", "container", id, "duration", time.Since(start))
}

// takeLast removes c from the pod if it is the pod's last container and the pod ends with
// it (Config.EndsWhenEmpty), and reports whether it did: its record in the guest
// (REMOVECONTAINER: 8-80 ms of a guest round trip) then goes with the VM. The check and the
// removal are one step, so a member that joins the pod does so before (and the pod goes
// on) or after, when the pod is ending (and its Create fails with the VM).
func (s *Supervisor) takeLast(c *container) bool {
	if !s.cfg.EndsWhenEmpty {
		return false
	}
	select {
	case <-s.ready:
		if s.agent == nil {
			return false // no VM: Close has nothing to end
		}
	default:
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.containers[c.id] != c || len(s.containers) != 1 {
		return false
	}
	delete(s.containers, c.id)
	return true
}

func (s *Supervisor) maybeEmpty() {
	s.mu.Lock()
	empty := len(s.containers) == 0 && s.everHad
	s.mu.Unlock()
	if empty {
		s.emptyOnce.Do(func() { close(s.empty) })
	}
}

// simple forwards a command naming a container to the agent after checking its status.
func (s *Supervisor) simple(ctx context.Context, id string, t agentproto.MsgType, payload, reply any, want ...string) (*container, error) {
	c, err := s.lookup(id)
	if err != nil {
		return nil, err
	}
	st := c.state()
	ok := len(want) == 0
	for _, w := range want {
		ok = ok || st.Status == w
	}
	if !ok {
		return nil, fmt.Errorf("container %q is %s: %s needs it %v: %w", id, st.Status, t, want, errdefs.ErrFailedPrecondition)
	}
	if err := s.agent.Call(ctx, t, payload, reply); err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	return c, nil
}

// Pause freezes a created or running container (libcontainer's freezer in the guest).
func (s *Supervisor) Pause(ctx context.Context, id string) error {
	st, err := s.State(id)
	if err != nil {
		return err
	}
	c, err := s.simple(ctx, id, agentproto.MsgPauseContainer, agentproto.ContainerRef{Container: id}, nil, state.StatusCreated, state.StatusRunning)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.status == st.Status {
		c.pausedFrom = st.Status
		c.status = state.StatusPaused
	}
	c.mu.Unlock()
	s.events.publish(Event{Type: EventPause, Container: id})
	return nil
}

// Resume thaws a paused container.
func (s *Supervisor) Resume(ctx context.Context, id string) error {
	c, err := s.simple(ctx, id, agentproto.MsgResumeContainer, agentproto.ContainerRef{Container: id}, nil, state.StatusPaused)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.status == state.StatusPaused {
		c.status = c.pausedFrom
		if c.status == "" {
			c.status = state.StatusRunning
		}
	}
	c.mu.Unlock()
	s.events.publish(Event{Type: EventResume, Container: id})
	return nil
}

// Update changes a container's resources.
func (s *Supervisor) Update(ctx context.Context, id string, res *specs.LinuxResources) error {
	_, err := s.simple(ctx, id, agentproto.MsgUpdateContainer, agentproto.UpdateContainer{Container: id, Resources: res}, nil, state.StatusCreated, state.StatusRunning, state.StatusPaused)
	return err
}

// ProcessInfo is one process of a container as the guest sees it.
type ProcessInfo struct {
	GuestPid int
	// Process is "init" or the exec id for a process the daemon started, "" for others
	// (children they forked).
	Process string
	// Args is the command line: the agent's view when it sends one, else the one the
	// daemon started the process with; nil when neither knows.
	Args []string
}

// Processes lists the processes of a container in the guest, in the order of their pids.
func (s *Supervisor) Processes(ctx context.Context, id string) ([]ProcessInfo, error) {
	var list agentproto.ProcessList
	c, err := s.simple(ctx, id, agentproto.MsgListProcesses, agentproto.ContainerRef{Container: id}, &list, state.StatusCreated, state.StatusRunning, state.StatusPaused)
	if err != nil {
		return nil, err
	}
	fromAgent := make(map[int][]string, len(list.Processes))
	for _, p := range list.Processes {
		fromAgent[p.Pid] = p.Cmdline
	}
	started := map[int]*process{}
	c.mu.Lock()
	for _, p := range c.processes {
		select {
		case <-p.done: // a recycled pid must not be named after a dead process
		default:
			started[p.guestPid] = p
		}
	}
	c.mu.Unlock()
	pids := append([]int(nil), list.Pids...)
	sort.Ints(pids)
	out := make([]ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		info := ProcessInfo{GuestPid: pid, Args: fromAgent[pid]}
		if p, ok := started[pid]; ok {
			info.Process = p.id
			if len(info.Args) == 0 {
				info.Args = p.args
			}
		}
		out = append(out, info)
	}
	return out, nil
}

// Stats reports a container's resource usage (its cgroup in the guest).
func (s *Supervisor) Stats(ctx context.Context, id string) (agentproto.Stats, error) {
	var st agentproto.Stats
	_, err := s.simple(ctx, id, agentproto.MsgStats, agentproto.ContainerRef{Container: id}, &st, state.StatusCreated, state.StatusRunning, state.StatusPaused)
	return st, err
}

// ResizePty sets a terminal process's window size.
func (s *Supervisor) ResizePty(ctx context.Context, id, proc string, rows, cols uint16) error {
	_, err := s.simple(ctx, id, agentproto.MsgWinSize, agentproto.WindowSize{Container: id, Process: procID(proc), Rows: rows, Cols: cols}, nil)
	return err
}

// stdinDrainTimeout bounds how long CloseStdin waits for the client's input to reach its
// end before it cuts it.
const stdinDrainTimeout = 2 * time.Second

// CloseStdin ends a process's stdin once what the client wrote reached the process. The
// client (containerd's CloseIO) closes its end of the stream first; the relay reads to
// that end and then ends the stdin stream, which the guest turns into the process's EOF
// (a closed pipe, or a terminal's EOF character) after the last byte. A command on the
// control channel instead could overtake bytes still on their way on the stream channel:
// `kubectl attach` lost its input so. A client that keeps its end open past
// stdinDrainTimeout has its input cut there.
func (s *Supervisor) CloseStdin(ctx context.Context, id, proc string) error {
	c, err := s.lookup(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	p := c.processes[procID(proc)]
	var (
		stdin     io.Closer
		stdinDone <-chan struct{}
	)
	if p != nil {
		stdin, stdinDone = p.stdin, p.stdinDone
	}
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("container %q has no process %q: %w", id, procID(proc), errdefs.ErrNotFound)
	}
	if stdinDone == nil {
		return nil // not started yet, or without stdin: nothing to end
	}
	select {
	case <-stdinDone:
		return nil
	case <-time.After(stdinDrainTimeout):
	case <-ctx.Done():
	}
	if stdin != nil {
		stdin.Close() // the copy ends, and with it the process's stdin
	}
	select {
	case <-stdinDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close stdin of container %q process %q: %w", id, procID(proc), ctx.Err())
	}
}

// decodeSpec parses a config.json.
func decodeSpec(b []byte) (*specs.Spec, error) {
	var sp specs.Spec
	if err := json.Unmarshal(b, &sp); err != nil {
		return nil, fmt.Errorf("config.json: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return &sp, nil
}
