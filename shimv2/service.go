// Package shimv2 is containerd-shim-runv-v2: runv as a containerd runtime v2 shim
// (io.containerd.runv.v2), speaking containerd's task API v2 over ttrpc. One shim serves one
// pod: it runs the pod's supervisor in-process (the same supervisor, factory and agent
// client as the CLI's pod daemon), so a pod is one shim process and one VM, and containers
// of a CRI sandbox (or a containerd shim group) join them. The shim exits once its last
// container is deleted, after powering the VM off.
package shimv2

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/errdefs/errgrpc"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/network"
	"github.com/runv-project/runv/supervisor"
)

// RuntimeName is the runtime containerd selects this shim by (ctr run --runtime,
// runtime_type in the CRI config); containerd runs it as containerd-shim-runv-v2.
const RuntimeName = "io.containerd.runv.v2"

// eventPublisher is what the shim needs of containerd's event forwarding.
type eventPublisher interface {
	Publish(ctx context.Context, topic string, event events.Event) error
	Close() error
}

// service implements containerd's task API for the containers of one pod.
type service struct {
	// ctx carries the containerd namespace; events are published with it.
	ctx       context.Context
	namespace string
	events    *publisher
	shutdown  func()
	cfg       Config
	// pid is the shim's own pid (Connect's ShimPid); tasks report their VM's (ctrTask.pid).
	pid uint32

	mu    sync.Mutex
	pod   *pod
	tasks map[string]*ctrTask

	// answering counts the Kill, Wait and Delete calls being served. Kill and Wait return
	// once a process ended, which is also when containerd may delete the pod's last task
	// and ask the shim to shut down; containerd deletes a pod's tasks concurrently (the
	// CRI on their exits), and the delete of one may shut the shim down while the delete of
	// the last is still powering the VM off and releasing the pod. Shutdown lets them finish
	// first.
	answering inflight
}

// shutdownGrace bounds how long Shutdown waits for calls still being answered.
const shutdownGrace = 10 * time.Second

// inflight counts calls being served.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while n is 0
}

// begin counts a call in; the function it returns counts it out.
func (f *inflight) begin() (end func()) {
	f.mu.Lock()
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.n--
		if f.n == 0 {
			close(f.idle)
			f.idle = nil
		}
		f.mu.Unlock()
	}
}

// wait returns once no call is being served, or after timeout (false).
func (f *inflight) wait(timeout time.Duration) bool {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	if idle == nil {
		return true
	}
	select {
	case <-idle:
		return true
	case <-time.After(timeout):
		return false
	}
}

// ctrTask is one container.
type ctrTask struct {
	id, bundle string
	// pid is the pid the container and its execs report (containerd's task pid, ctr task
	// ls, the CRI's): the host pid of the pod's VM, the QEMU process that runs them. A
	// process in the VM has no host pid of its own, and a guest pid would name an
	// unrelated host process; the VM's process is where the containers' CPU time and
	// memory show on the host, it is in the pod's cgroup, and killing it ends them (see
	// docs/kubernetes.md, "Task pids").
	pid uint32
	// rootfsMounted: the shim mounted containerd's rootfs mounts on bundle/rootfs.
	rootfsMounted bool
	stdio         stdioPaths
	init          *proc
	execs         map[string]*proc
}

// proc is one process of a container: its init (execID "") or an exec.
type proc struct {
	container, execID string
	stdio             stdioPaths
	spec              *specs.Process // execs only

	// mu is held while a process starts and its start event is published, and while its
	// exit is published: containerd must see the start before the exit.
	mu      sync.Mutex
	started bool
	exited  chan struct{}
	exit    agentproto.ProcessExit
	exitAt  time.Time
}

func newProc(container, execID string, stdio stdioPaths) *proc {
	return &proc{container: container, execID: execID, stdio: stdio, exited: make(chan struct{})}
}

// procID is the supervisor's name of the process.
func (p *proc) procID() string {
	if p.execID == "" {
		return agentproto.InitProcessID
	}
	return p.execID
}

// eventID is the process's id in containerd's events: the container id for its init.
func (p *proc) eventID() string {
	if p.execID == "" {
		return p.container
	}
	return p.execID
}

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// New is the shim's init function for containerd's shim library.
func New(ctx context.Context, id string, pub shim.Publisher, shutdown func()) (shim.Shim, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, fmt.Errorf("shim %s: %w", id, err)
	}
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	setupLogging(cfg.Debug)
	s := &service{
		ctx:       logging.With(ctx, "namespace", ns),
		namespace: ns,
		events:    newPublisher(pub),
		shutdown:  shutdown,
		cfg:       cfg,
		pid:       uint32(os.Getpid()),
		tasks:     map[string]*ctrTask{},
	}
	return s, nil
}

// grpcErr carries an error's class to containerd (ttrpc uses gRPC status codes).
func grpcErr(err error) error { return errgrpc.ToGRPC(err) }

func (s *service) lookup(id, execID string) (*ctrTask, *proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return nil, nil, fmt.Errorf("container %q is not in this runv shim: %w", id, errdefs.ErrNotFound)
	}
	if execID == "" {
		return t, t.init, nil
	}
	p, ok := t.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("container %q has no exec process %q: %w", id, execID, errdefs.ErrNotFound)
	}
	return t, p, nil
}

func (s *service) supervisor() (*supervisor.Supervisor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pod == nil {
		return nil, fmt.Errorf("the pod of this shim is gone: %w", errdefs.ErrUnavailable)
	}
	return s.pod.sup, nil
}

// Create creates a container in the pod's VM, starting the pod with its first container.
func (s *service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (_ *taskapi.CreateTaskResponse, retErr error) {
	ctx = logging.With(s.reqCtx(ctx), "container", r.ID)
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, grpcErr(fmt.Errorf("container %q: restoring from a checkpoint is not supported by runv: %w", r.ID, errdefs.ErrNotImplemented))
	}
	if err := state.ValidateID(r.ID); err != nil {
		return nil, grpcErr(err)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("container %q: %w", r.ID, err))
	}
	// Refused before the pod starts: a refused container boots no VM.
	if err := supervisor.CheckHostNamespaces(r.ID, spec); err != nil {
		return nil, grpcErr(err)
	}
	netns, _ := network.NamespaceOf(spec)
	member := podOf(r.ID, spec.Annotations)
	factorySetting, err := factoryOption(r.Options)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("container %q: %w", r.ID, err))
	}
	cgroupPath, err := podCgroupPath(spec, spec.Annotations[annotationContainerType] == "sandbox")
	if err != nil {
		return nil, grpcErr(fmt.Errorf("container %q: %w", r.ID, err))
	}
	t := &ctrTask{id: r.ID, bundle: r.Bundle, execs: map[string]*proc{},
		stdio: stdioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}}
	t.init = newProc(r.ID, "", t.stdio)

	s.mu.Lock()
	if _, dup := s.tasks[r.ID]; dup {
		s.mu.Unlock()
		return nil, grpcErr(fmt.Errorf("container %q already exists: %w", r.ID, errdefs.ErrAlreadyExists))
	}
	p, fresh, err := s.podLocked(ctx, member.pod, factorySetting, cgroupPath)
	if err != nil {
		s.mu.Unlock()
		return nil, grpcErr(err)
	}
	s.tasks[r.ID] = t
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.tasks, r.ID)
			s.mu.Unlock()
			if t.rootfsMounted {
				unmountRootfs(ctx, r.Bundle)
			}
			s.closePodIfEmpty(ctx)
		}
	}()

	if len(r.Rootfs) > 0 {
		if err := mountRootfs(r.Bundle, r.Rootfs); err != nil {
			return nil, grpcErr(fmt.Errorf("container %q: %w", r.ID, err))
		}
		t.rootfsMounted = true
	}
	if err := p.sup.SizeVM(spec); err != nil {
		return nil, grpcErr(err)
	}
	// The pod's network namespace (a CRI sandbox's, configured by CNI before it is
	// created) is mirrored onto the VM before anything runs in it: while the guest creates
	// the pod's first container, which only runs at Start. Without a path the container
	// has a network namespace of its own in the guest (loopback).
	connect := fresh && netns != ""
	if connect && setsNetSysctls(spec) {
		// The guest applies them to the pod's network as it creates the container, and an
		// interface's (net.ipv4.conf.eth0.*) needs that interface configured, as CNI
		// configured it before runc would create the container.
		if err := p.sup.ConnectNetwork(ctx, netns); err != nil {
			return nil, grpcErr(err)
		}
		connect = false
	}
	files, err := t.stdio.open(ctx, s.namespace, r.ID)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("container %q: %w", r.ID, err))
	}
	var network chan error
	if connect {
		network = make(chan error, 1)
		go func() { network <- p.sup.ConnectNetwork(ctx, netns) }()
	}
	_, err = p.sup.Create(ctx, supervisor.CreateRequest{
		ID: r.ID, Bundle: r.Bundle, Spec: spec, Stdio: files, Sandbox: member.sandbox,
	})
	if network != nil {
		if nerr := <-network; nerr != nil && err == nil {
			if derr := p.sup.Delete(context.WithoutCancel(ctx), r.ID); derr != nil {
				logging.G(ctx).Warn("remove the container whose network failed", "error", derr)
			}
			err = nerr
		}
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	t.pid = s.vmPid(p.sup)
	go s.waitExit(p.sup, t.init, t.pid)
	s.events.taskCreate(s.ctx, r, t.pid)
	return &taskapi.CreateTaskResponse{Pid: t.pid}, nil
}

// vmPid is the host pid of the pod's VM. A VM runs once a container was created in it; the
// shim's pid stands in if not (containerd takes pid 0 for "no process").
func (s *service) vmPid(sup *supervisor.Supervisor) uint32 {
	if pid := sup.Info().VMPid; pid > 0 {
		return uint32(pid)
	}
	return s.pid
}

// setsNetSysctls tells whether a container sets sysctls of its network namespace (net.*,
// or runc's slash form net/...).
func setsNetSysctls(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return false
	}
	for k := range spec.Linux.Sysctl {
		if strings.HasPrefix(k, "net.") || strings.HasPrefix(k, "net/") {
			return true
		}
	}
	return false
}

// Start starts a container's init or an exec process.
func (s *service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	ctx = logging.With(s.reqCtx(ctx), "container", r.ID, "process", r.ExecID)
	t, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return nil, grpcErr(fmt.Errorf("container %q process %q was started already: %w", r.ID, p.procID(), errdefs.ErrFailedPrecondition))
	}
	if r.ExecID == "" {
		if err := sup.Start(ctx, r.ID); err != nil {
			return nil, grpcErr(err)
		}
		p.started = true
		s.events.taskStart(s.ctx, r.ID, t.pid)
		return &taskapi.StartResponse{Pid: t.pid}, nil
	}
	files, err := p.stdio.open(ctx, s.namespace, r.ID)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("container %q exec %q: %w", r.ID, r.ExecID, err))
	}
	if _, err := sup.Exec(ctx, supervisor.ExecRequest{ID: t.id, Process: r.ExecID, Spec: p.spec, Stdio: files}); err != nil {
		return nil, grpcErr(err)
	}
	p.started = true
	go s.waitExit(sup, p, t.pid)
	s.events.execStarted(s.ctx, r.ID, r.ExecID, t.pid)
	return &taskapi.StartResponse{Pid: t.pid}, nil
}

// waitExit records a process's exit and publishes it (with its task's pid), after its
// start event.
func (s *service) waitExit(sup *supervisor.Supervisor, p *proc, pid uint32) {
	exit, err := sup.Wait(context.Background(), p.container, p.procID())
	if err != nil {
		// The container is gone from the supervisor (its pod closed): it was killed.
		exit = agentproto.ProcessExit{ExitCode: 128 + int(syscall.SIGKILL), Signal: int(syscall.SIGKILL), Error: err.Error()}
	}
	p.mu.Lock()
	p.exit, p.exitAt = exit, time.Now()
	if exit.Error != "" {
		logging.G(s.ctx).Info("process ended", "container", p.container, "process", p.procID(), "exit_code", exit.ExitCode, "error", exit.Error)
	}
	s.events.taskExit(s.ctx, p, pid)
	close(p.exited)
	p.mu.Unlock()
}

// Exec registers an exec process; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	var spec specs.Process
	if r.Spec == nil || json.Unmarshal(r.Spec.Value, &spec) != nil {
		return nil, grpcErr(fmt.Errorf("exec %q in container %q: the process spec is missing or not JSON: %w", r.ExecID, r.ID, errdefs.ErrInvalidArgument))
	}
	if err := state.ValidateID(r.ExecID); err != nil {
		return nil, grpcErr(fmt.Errorf("exec in container %q: %w", r.ID, err))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[r.ID]
	if !ok {
		return nil, grpcErr(fmt.Errorf("container %q is not in this runv shim: %w", r.ID, errdefs.ErrNotFound))
	}
	if _, dup := t.execs[r.ExecID]; dup {
		return nil, grpcErr(fmt.Errorf("container %q already has an exec %q: %w", r.ID, r.ExecID, errdefs.ErrAlreadyExists))
	}
	if t.init.hasExited() {
		return nil, grpcErr(fmt.Errorf("cannot exec in container %q: it is stopped: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	spec.Terminal = r.Terminal
	p := newProc(r.ID, r.ExecID, stdioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	p.spec = &spec
	t.execs[r.ExecID] = p
	s.events.execAdded(s.ctx, r.ID, r.ExecID)
	return &emptypb.Empty{}, nil
}

// State reports a process's state.
func (s *service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	t, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &taskapi.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: t.bundle, Pid: t.pid,
		Stdin: p.stdio.stdin, Stdout: p.stdio.stdout, Stderr: p.stdio.stderr, Terminal: p.stdio.terminal,
	}
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	switch {
	case p.hasExited():
		resp.Status = task.Status_STOPPED
		resp.ExitStatus, resp.ExitedAt = uint32(p.exit.ExitCode), timestamppb.New(p.exitAt)
	case r.ExecID != "" && !started:
		resp.Status = task.Status_CREATED
	default:
		resp.Status = task.Status_RUNNING
		if sup, err := s.supervisor(); err == nil {
			if st, err := sup.State(r.ID); err == nil {
				resp.Status = containerStatus(st.Status, r.ExecID != "")
			}
		}
	}
	return resp, nil
}

// containerStatus maps the supervisor's container status to containerd's; a running exec
// of a paused container is paused too.
func containerStatus(st string, exec bool) task.Status {
	switch st {
	case state.StatusCreated, state.StatusCreating:
		if exec {
			return task.Status_RUNNING
		}
		return task.Status_CREATED
	case state.StatusPaused:
		return task.Status_PAUSED
	case state.StatusStopped:
		return task.Status_STOPPED
	}
	return task.Status_RUNNING
}

// Wait waits for a process's exit.
func (s *service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	defer s.answering.begin()()
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	select {
	case <-p.exited:
		return &taskapi.WaitResponse{ExitStatus: uint32(p.exit.ExitCode), ExitedAt: timestamppb.New(p.exitAt)}, nil
	case <-ctx.Done():
		return nil, grpcErr(ctx.Err())
	}
}

// Kill signals a process, or with All every process of the container. Killing a process
// that has exited answers NotFound, as containerd's runc shim does; with All it succeeds
// (there is nothing left to kill), as runc does.
func (s *service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	defer s.answering.begin()()
	ctx = logging.With(s.reqCtx(ctx), "container", r.ID, "process", r.ExecID)
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	finished := func() (*emptypb.Empty, error) {
		if r.All {
			return &emptypb.Empty{}, nil
		}
		return nil, grpcErr(fmt.Errorf("container %q process %q: process already finished: %w", r.ID, p.procID(), errdefs.ErrNotFound))
	}
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if p.hasExited() || (r.ExecID != "" && !started) {
		return finished()
	}
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := signal(ctx, sup, r.ID, p.procID(), syscall.Signal(r.Signal), r.All); err != nil {
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			// It exited while we looked.
			return finished()
		}
		return nil, grpcErr(err)
	}
	return &emptypb.Empty{}, nil
}

// signal sends sig to a process within a bound: a guest that stops answering must not hold
// containerd's kill (and the CRI's stop, and ctr's forced delete, which wait for it). A
// SIGKILL the guest does not carry out in time ends the pod's VM, and with it the process
// (supervisor.Kill); another signal fails as the guest's failure to answer.
func signal(ctx context.Context, sup *supervisor.Supervisor, id, proc string, sig syscall.Signal, all bool) error {
	if sig == syscall.SIGKILL {
		return sup.Kill(ctx, id, proc, all)
	}
	sctx, cancel := context.WithTimeout(ctx, supervisor.GuestKillTimeout)
	defer cancel()
	if err := sup.Signal(sctx, id, proc, int(sig), all); err != nil {
		if sctx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("container %q process %q: the guest did not carry out signal %d within %s: %w: %w", id, proc, sig, supervisor.GuestKillTimeout, err, errdefs.ErrUnavailable)
		}
		return err
	}
	return nil
}

// Delete removes an exec process's record, or a container; the pod's VM is powered off
// with its last container.
func (s *service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	defer s.answering.begin()()
	ctx = logging.With(s.reqCtx(ctx), "container", r.ID, "process", r.ExecID)
	t, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if r.ExecID != "" {
		p.mu.Lock()
		started := p.started
		p.mu.Unlock()
		if started && !p.hasExited() {
			return nil, grpcErr(fmt.Errorf("cannot delete exec %q of container %q: it is running: %w", r.ExecID, r.ID, errdefs.ErrFailedPrecondition))
		}
		s.mu.Lock()
		delete(t.execs, r.ExecID)
		s.mu.Unlock()
		return deleteResponse(p, t.pid), nil
	}
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := sup.Delete(ctx, r.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, grpcErr(err)
	}
	// A created container was killed by Delete: its exit is recorded before we answer.
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, grpcErr(ctx.Err())
	}
	if t.rootfsMounted {
		unmountRootfs(ctx, t.bundle)
	}
	s.mu.Lock()
	delete(s.tasks, r.ID)
	s.mu.Unlock()
	resp := deleteResponse(p, t.pid)
	s.events.taskDelete(s.ctx, r.ID, resp)
	s.closePodIfEmpty(ctx)
	return resp, nil
}

func deleteResponse(p *proc, pid uint32) *taskapi.DeleteResponse {
	resp := &taskapi.DeleteResponse{Pid: pid}
	if p.hasExited() {
		resp.ExitStatus, resp.ExitedAt = uint32(p.exit.ExitCode), timestamppb.New(p.exitAt)
	} else {
		resp.ExitedAt = timestamppb.Now()
	}
	return resp
}

// Pids lists the container's processes by their guest pids: ctr task ps shows what runs
// in the container, as ps in the VM would. They are not host pids; the task's pid is the
// VM's (ctrTask.pid).
func (s *service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	procs, err := sup.Processes(s.reqCtx(ctx), r.ID)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &taskapi.PidsResponse{}
	for _, p := range procs {
		resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(p.GuestPid)})
	}
	return resp, nil
}

// Pause freezes the container (its cgroup in the guest).
func (s *service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := sup.Pause(s.reqCtx(ctx), r.ID); err != nil {
		return nil, grpcErr(err)
	}
	s.events.paused(s.ctx, r.ID)
	return &emptypb.Empty{}, nil
}

// Resume thaws the container.
func (s *service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := sup.Resume(s.reqCtx(ctx), r.ID); err != nil {
		return nil, grpcErr(err)
	}
	s.events.resumed(s.ctx, r.ID)
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported: a container in a VM cannot be checkpointed with CRIU.
func (s *service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, grpcErr(fmt.Errorf("container %q: checkpoint is not supported by runv (the container runs in a VM): %w", r.ID, errdefs.ErrNotImplemented))
}

// ResizePty sets a terminal process's window size.
func (s *service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := sup.ResizePty(s.reqCtx(ctx), r.ID, p.procID(), uint16(r.Height), uint16(r.Width)); err != nil {
		return nil, grpcErr(err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcErr(err)
	}
	if !r.Stdin || p.hasExited() {
		return &emptypb.Empty{}, nil
	}
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := sup.CloseStdin(s.reqCtx(ctx), r.ID, p.procID()); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, grpcErr(err)
	}
	return &emptypb.Empty{}, nil
}

// Update changes a container's resources (its cgroup in the guest).
func (s *service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	var res specs.LinuxResources
	if r.Resources == nil || json.Unmarshal(r.Resources.Value, &res) != nil {
		return nil, grpcErr(fmt.Errorf("update container %q: resources missing or not the runtime-spec's LinuxResources JSON: %w", r.ID, errdefs.ErrInvalidArgument))
	}
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := sup.Update(s.reqCtx(ctx), r.ID, &res); err != nil {
		return nil, grpcErr(err)
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the container's cgroup metrics, read in the guest.
func (s *service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	sup, err := s.supervisor()
	if err != nil {
		return nil, grpcErr(err)
	}
	st, err := sup.Stats(s.reqCtx(ctx), r.ID)
	if err != nil {
		return nil, grpcErr(err)
	}
	m, err := metrics(st)
	if err != nil {
		return nil, grpcErr(fmt.Errorf("container %q: %w", r.ID, err))
	}
	return &taskapi.StatsResponse{Stats: m}, nil
}

// Connect tells containerd the shim's pid and the task's.
func (s *service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: s.pid}
	if t, _, err := s.lookup(r.ID, ""); err == nil {
		resp.TaskPid = t.pid
	}
	return resp, nil
}

// Shutdown ends the shim once it has no container left (containerd asks after every
// delete).
func (s *service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	left := len(s.tasks)
	s.mu.Unlock()
	if left > 0 {
		return &emptypb.Empty{}, nil
	}
	s.closePodIfEmpty(ctx)
	if !s.answering.wait(shutdownGrace) {
		logging.G(s.ctx).Warn("shutting down with calls still unanswered", "after", shutdownGrace)
	}
	// The shim library waits for the publisher to close before the shim exits.
	s.events.close(s.ctx)
	s.shutdown()
	return &emptypb.Empty{}, nil
}

// reqCtx is a request's context with the shim's logger.
func (s *service) reqCtx(ctx context.Context) context.Context {
	return logging.WithLogger(ctx, logging.G(s.ctx))
}
