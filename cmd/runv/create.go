package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/atomicfile"
	"github.com/runv-project/runv/internal/shim"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/oci"
	"github.com/runv-project/runv/supervisor"
)

var createFlags = []cli.Flag{
	&cli.StringFlag{Name: "bundle", Aliases: []string{"b"}, Value: ".", Usage: "path to the bundle directory"},
	&cli.StringFlag{Name: "pid-file", Usage: "file to write the process id (of the container's shim) to"},
	&cli.StringFlag{Name: "console-socket", Usage: "unix socket that receives the pty master of a terminal container"},
	&cli.BoolFlag{Name: "no-pivot", Usage: "accepted for runc compatibility; the guest always pivots into a real root"},
	&cli.BoolFlag{Name: "no-new-keyring", Usage: "accepted for runc compatibility"},
	&cli.IntFlag{Name: "preserve-fds", Usage: "accepted for runc compatibility; extra descriptors cannot cross into the VM"},
	&cli.StringFlag{Name: "pidfd-socket", Usage: "not supported: the container's process runs in a VM, the host has no pidfd for it"},
}

var createCommand = &cli.Command{
	Name:      "create",
	Usage:     "create a container (its VM boots; its process waits for 'runv start')",
	ArgsUsage: "<container-id>",
	Flags:     createFlags,
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		if err := unsupportedFlags(c, "pidfd-socket"); err != nil {
			return err
		}
		_, err = createContainer(c.Context, g, id, createOptions{
			bundle: c.String("bundle"), pidFile: c.String("pid-file"), shim: true,
			consoleSocket: c.String("console-socket"),
		})
		return err
	},
}

// idAndGlobals parses the container id argument of a command and the global options.
func idAndGlobals(c *cli.Context) (string, *globals, error) {
	id, err := oneID(c)
	if err != nil {
		return "", nil, err
	}
	g, err := globalsFrom(c)
	return id, g, err
}

func oneID(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s needs exactly one container id (got %d arguments); usage: runv %s [options] <container-id>", c.Command.Name, c.NArg(), c.Command.Name)
	}
	// The id is validated where state is made or found: the state store (internal/state).
	return c.Args().First(), nil
}

type createOptions struct {
	bundle  string
	pidFile string
	// shim: start a `runv shim` to stand in for the container's init (create, run -d). A
	// foreground `run` plays that role itself.
	shim bool
	// consoleSocket receives the pty master of a terminal container (detached only).
	consoleSocket string
}

// created is a container that exists in its pod.
type created struct {
	rec *state.Container
	pod *podConn
	// term holds the pty master of a foreground terminal container (run without -d).
	term *procTerminal
	// started: the container's init was started with its Create (startsWithCreate); att
	// then catches the signals meant for it since before.
	started bool
	att     *attachment
}

// createContainer creates a container and records it, in named steps. Each step registers
// how to undo what it made; if a later one fails, all of it is undone, latest first: no
// state directory, daemon, VM, shim or host cgroup is left behind.
func createContainer(ctx context.Context, g *globals, id string, o createOptions) (res *created, err error) {
	var undo cleanups
	defer undo.run(&err)
	bundle, spec, raw, err := oci.LoadBundle(o.bundle)
	if err != nil {
		return nil, err
	}
	if err := g.checkBootFiles(); err != nil {
		return nil, err
	}
	term, err := prepareTerminal(spec.Process, o.shim, o.consoleSocket)
	if err != nil {
		return nil, err
	}
	undo.onFailure(term.Close)
	member, err := podMembership(g.store, id, spec)
	if err != nil {
		return nil, err
	}
	if err := checkSocketRoom(g.store.PodDir(newPodID())); err != nil {
		return nil, err
	}
	h, err := g.store.Create(id)
	if err != nil {
		return nil, err
	}
	undo.always(h.Unlock)
	undo.onFailure(func() { h.Remove() })
	rec := &state.Container{ID: id, Bundle: bundle, Rootfs: spec.Root.Path, Annotations: spec.Annotations, Sandbox: member == nil, Spec: spec}
	pod, err := enterPod(ctx, g, rec, member, &undo)
	if err != nil {
		return nil, err
	}
	sandbox := "" // the container whose namespaces this one joins
	if member != nil {
		sandbox = member.ID
	}
	// The stand-in (a shim with its host cgroup) starts while the container is created.
	pending, err := startStandIn(ctx, g, rec, term, o.shim, &undo)
	if err != nil {
		return nil, err
	}
	// A foreground run with nothing to do between its container's create and start has
	// both done in one call: the guest's STARTCONTAINER follows NEWCONTAINER at once
	// (3-4 ms sooner, idle; more under load).
	var att *attachment
	if !o.shim && startsWithCreate(rec, term) {
		att = newAttachment(pod, id, "", catchSignals()) // signals are caught from before the process exists
		undo.onFailure(att.Close)
	}
	started, err := createInPod(ctx, pod, rec, sandbox, raw, term, !o.shim, att != nil, &undo)
	if err != nil {
		return nil, err
	}
	if err := pending.finish(ctx, pod, rec); err != nil {
		return nil, err
	}
	if err := publish(ctx, h, rec, term, o.pidFile); err != nil {
		return nil, err
	}
	logging.G(ctx).Debug("container published", "container", id)
	if o.shim {
		term.Close()
		term = nil
	}
	return &created{rec: rec, pod: pod, term: term, started: started, att: att}, nil
}

// startsWithCreate reports whether a foreground run's container may start in its Create
// call: nothing of runv's has to happen between the two (no prestart, createRuntime,
// createContainer or startContainer hook, no network namespace to connect) and no
// terminal has to be attached first. rec.Shim is set (startStandIn).
func startsWithCreate(rec *state.Container, term *procTerminal) bool {
	if term != nil || podNetNS(rec) != "" {
		return false
	}
	for _, kind := range []string{hookPrestart, hookCreateRuntime, hookCreateContainer, hookStartContainer} {
		if len(hooksOf(rec.Spec, kind)) > 0 {
			return false
		}
	}
	return true
}

// enterPod connects to the pod the container joins (member), or starts a pod for it, which
// goes with it if a later step fails. It records the pod in rec.
func enterPod(ctx context.Context, g *globals, rec, member *state.Container, undo *cleanups) (*podConn, error) {
	if member != nil {
		if !daemonAlive(member) {
			return nil, fmt.Errorf("cannot add container %q to the pod of %q: that pod is stopped: %w", rec.ID, member.ID, errdefs.ErrFailedPrecondition)
		}
		rec.Pod, rec.PodDir, rec.Daemon = member.Pod, member.PodDir, member.Daemon
	} else {
		rec.Pod = newPodID()
		rec.PodDir = g.store.PodDir(rec.Pod)
		// A pod made for this container goes with it, also when its daemon never started
		// (startDaemon made the directory).
		undo.onFailure(func() { supervisor.CleanupPodDir(rec.PodDir) })
		logging.G(ctx).Debug("starting the pod daemon", "container", rec.ID, "pod", rec.Pod)
		start := time.Now()
		daemon, err := startDaemon(g, rec.Pod, rec.PodDir, rec.Spec)
		if err != nil {
			return nil, err
		}
		logging.G(ctx).Debug("pod daemon serving", "container", rec.ID, "pod", rec.Pod, "pid", daemon.Pid, "duration", time.Since(start))
		rec.Daemon = daemon
		undo.onFailure(func() { stopDaemon(daemon) })
	}
	pod, err := dialPod(rec.PodDir)
	if err != nil {
		return nil, err
	}
	undo.onFailure(func() { pod.Close() })
	return pod, nil
}

// stopDaemon stops the daemon of a pod made for a container whose create failed.
func stopDaemon(daemon state.Process) {
	if p, _ := os.FindProcess(daemon.Pid); p != nil {
		p.Signal(os.Interrupt)
	}
	if werr := waitGone(daemon, 15*time.Second); werr != nil {
		if p, _ := os.FindProcess(daemon.Pid); p != nil {
			p.Kill()
		}
	}
}

// createInPod has the pod daemon create the container (a member of sandbox's namespaces when
// sandbox is set), with our stdio or the terminal's, and this process as the stand-in of
// its init when it runs in the foreground; if a later step fails, the daemon discards it.
// With start the daemon also starts it; started says whether it did (a daemon of an older
// runv does not).
func createInPod(ctx context.Context, pod *podConn, rec *state.Container, sandbox string, raw []byte, term *procTerminal, foreground, start bool, undo *cleanups) (started bool, err error) {
	stdin, stdout, stderr := os.Stdin, os.Stdout, os.Stderr
	if term != nil {
		stdin, stdout, stderr = term.stdio()
	}
	stdio, err := pod.sendStdio(stdin, stdout, stderr, foreground)
	if err != nil {
		return false, err
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	resp, err := pod.api.Create(rctx, &podapi.CreateRequest{Id: rec.ID, Bundle: rec.Bundle, Spec: raw, Stdio: stdio, Sandbox: sandbox, Console: term.size(), Start: start})
	if err != nil {
		return false, fmt.Errorf("create container %q: %w", rec.ID, rpcErr(err))
	}
	rec.Created = time.Now().UTC()
	logging.G(ctx).Debug("container created", "container", rec.ID, "pod", rec.Pod, "guest_pid", resp.GuestPid, "started", resp.Started)
	undo.onFailure(func() { discardContainer(pod, rec.ID) })
	if foreground && !resp.StandInWatched {
		// A pod daemon of an older runv (started before an upgrade) ignored the pidfd.
		return resp.Started, pod.watchStandIn(ctx, rec.ID, "", os.Getpid())
	}
	return resp.Started, nil
}

// startStandIn gives the container its stand-in on the host, the pid clients see: a shim in
// the container's host namespaces and cgroup (withShim), or this process for a foreground
// run. The shim starts now, waiting on its gate, and its host cgroup is made in the
// background: both overlap the container's creation in the guest (createInPod), which they
// used to follow (20-25 ms of every `runv create`); finish completes it once the container
// exists.
func startStandIn(ctx context.Context, g *globals, rec *state.Container, term *procTerminal, withShim bool, undo *cleanups) (*pendingStandIn, error) {
	if !withShim {
		// A foreground run stands in for the container's init itself (the daemon watches
		// it since Create: createInPod).
		rec.Shim = state.Self()
		return nil, nil
	}
	var ctty *os.File
	if term != nil {
		ctty = term.pty.slave
	}
	start := time.Now()
	s, err := startShim(g, rec, "", ctty, shim.ForSpec(rec.Spec), true)
	if err != nil {
		return nil, err
	}
	p := &pendingStandIn{shim: s, id: rec.ID, spec: rec.Spec, cgroupDone: make(chan struct{})}
	go func() {
		defer close(p.cgroupDone)
		p.cgroup, p.cgroupErr = shim.CreateCgroup(rec.ID, rec.Spec, g.systemdCgroup, s.pid())
		logging.G(ctx).Debug("shim started, host cgroup made", "container", rec.ID, "pid", s.pid(), "duration", time.Since(start))
	}()
	undo.onFailure(p.undo)
	return p, nil
}

// pendingStandIn is a container's shim that runs, gated, until its container exists.
type pendingStandIn struct {
	shim *startedShim
	id   string
	spec *specs.Spec
	// cgroupDone is closed once the host cgroup was made (cgroup) or not (cgroupErr).
	cgroupDone chan struct{}
	cgroup     *shim.Cgroup
	cgroupErr  error
	// registered is the shim once the pod daemon watches it.
	registered state.Process
}

// finish has the pod daemon watch the shim and lets it go on, and records both in rec.
func (p *pendingStandIn) finish(ctx context.Context, pod *podConn, rec *state.Container) error {
	if p == nil {
		return nil
	}
	<-p.cgroupDone
	if p.cgroupErr != nil {
		return p.cgroupErr
	}
	rec.HostCgroup = p.cgroup
	sp, err := p.shim.register(ctx, pod)
	if err != nil {
		return err
	}
	p.registered, rec.Shim = sp, sp
	return nil
}

// undo ends the shim and removes its host cgroup, which can only go once the shim has.
func (p *pendingStandIn) undo() {
	<-p.cgroupDone
	if p.registered.Pid != 0 {
		// Told by the pod daemon that its container is gone, it would exit soon.
		killProcess(p.registered)
		waitGone(p.registered, 10*time.Second)
	} else {
		p.shim.abort()
	}
	p.cgroup.Destroy(p.id, p.spec)
}

// publish makes the container what a client sees after create: the terminal's master with
// its holder, the create hooks run, the pid file and the record written.
func publish(ctx context.Context, h *state.Handle, rec *state.Container, term *procTerminal, pidFile string) error {
	// The daemon and the shim hold the slave now; the master's holder must see the output
	// end when they close theirs.
	term.closeSlave()
	if err := runCreateHooks(ctx, rec); err != nil {
		return err
	}
	if err := term.sendMaster(); err != nil {
		return err
	}
	if pidFile != "" {
		if err := writePidFile(pidFile, rec.Shim.Pid); err != nil {
			return err
		}
	}
	return h.Save(rec)
}

// maxSocketPath is the longest unix socket path the kernel accepts (sun_path less its NUL).
const maxSocketPath = 107

// socketRoom is what a pod directory's deepest socket adds to its path (<pod>/vm/stream.sock
// and its kin).
const socketRoom = len("/vm/") + 20

// checkSocketRoom refuses a state root so deep that the pod's sockets could not be bound.
func checkSocketRoom(podDir string) error {
	if n := len(podDir) + socketRoom; n > maxSocketPath {
		return fmt.Errorf("--root %s is too deep: the pod's unix sockets under it would need %d bytes, the kernel allows %d; use a shorter --root: %w",
			filepath.Dir(filepath.Dir(podDir)), n, maxSocketPath, errdefs.ErrInvalidArgument)
	}
	return nil
}

func writePidFile(path string, pid int) error {
	if err := atomicfile.Write(path, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	return nil
}

var errNotRunning = errors.New("container not running")
