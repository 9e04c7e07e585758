package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/poddaemon"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/network"
	"github.com/runv-project/runv/supervisor"
)

var startCommand = &cli.Command{
	Name:      "start",
	Usage:     "start the process of a created container",
	ArgsUsage: "<container-id>",
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		return startContainer(c.Context, g, id)
	},
}

func startContainer(ctx context.Context, g *globals, id string) error {
	h, err := g.store.Lock(id)
	if err != nil {
		return err
	}
	defer h.Unlock()
	rec, err := h.Load()
	if err != nil {
		return err
	}
	live, err := liveState(rec)
	if err != nil {
		return fmt.Errorf("cannot start container %q: %w", id, err)
	}
	switch st := live.Status; st {
	case state.StatusCreated:
	case state.StatusStopped:
		return fmt.Errorf("container %q: %w", id, errStartStopped)
	case state.StatusRunning:
		return fmt.Errorf("container %q: %w", id, errStartRunning)
	default:
		return fmt.Errorf("container %q: %w", id, errStartInState(st))
	}
	pod, err := dialLive(rec)
	if err != nil {
		return fmt.Errorf("cannot start container %q: %w", id, err)
	}
	defer pod.Close()
	if err := startInPod(ctx, pod, rec); err != nil {
		return err
	}
	warnHooks(ctx, hookPoststart, hooksOf(rec.Spec, hookPoststart), hookState(rec, state.StatusRunning))
	return nil
}

// startInPod runs a created container's process. The pod's first container connects the
// pod to its network namespace first: the hooks that configure it (docker's prestart) have
// run by now, and its process must find the network up.
func startInPod(ctx context.Context, pod *podConn, rec *state.Container) error {
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if ns := podNetNS(rec); ns != "" {
		_, err := pod.api.ConnectNetwork(sctx, &podapi.NetworkRequest{Netns: ns})
		if err != nil && !errors.Is(rpcErr(err), errdefs.ErrAlreadyExists) {
			return fmt.Errorf("start container %q: %w", rec.ID, rpcErr(err))
		}
	}
	if _, err := pod.api.Start(sctx, &podapi.ContainerRequest{Id: rec.ID}); err != nil {
		return fmt.Errorf("start container %q: %w", rec.ID, rpcErr(err))
	}
	return nil
}

// podNetNS is the host network namespace a pod's VM mirrors, named by its first container:
// the config's path, else the new namespace its host stand-in (shim) got, where docker's
// prestart hook puts the interfaces. "" when there is nothing to mirror: a member of a pod
// shares its sandbox's network, and a foreground `run` has no stand-in process (its new
// namespace would be empty: loopback only, which the VM has anyway).
func podNetNS(rec *state.Container) string {
	if !rec.Sandbox {
		return ""
	}
	path, err := network.NamespaceOf(rec.Spec)
	if err != nil || path != "" {
		return path // a host-network config was refused at create
	}
	if rec.Shim.Pid == 0 || rec.Shim.Pid == os.Getpid() {
		return ""
	}
	return fmt.Sprintf("/proc/%d/ns/net", rec.Shim.Pid)
}

// dialLive connects to the pod daemon of a container whose daemon is alive.
func dialLive(rec *state.Container) (*podConn, error) {
	if !daemonAlive(rec) {
		return nil, fmt.Errorf("container %q is stopped (its pod daemon is gone): %w", rec.ID, errdefs.ErrFailedPrecondition)
	}
	return dialPod(rec.PodDir)
}

// ociState is the state JSON of the OCI runtime spec, as runc prints it.
type ociState struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Owner       string            `json:"owner"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// liveState asks the pod daemon for the truth. A container whose daemon is gone, or that its
// daemon no longer has, is stopped; a daemon that lives but does not answer (busy, or
// stuck) is an error, never "stopped".
func liveState(rec *state.Container) (ociState, error) {
	st := ociState{OCIVersion: ociVersion, ID: rec.ID, Status: state.StatusStopped, Bundle: rec.Bundle,
		Rootfs: rec.Rootfs, Created: rec.Created, Annotations: rec.Annotations}
	if rec.Spec != nil && rec.Spec.Version != "" {
		st.OCIVersion = rec.Spec.Version
	}
	status, err := podStatus(rec)
	if err != nil {
		return st, err
	}
	st.Status = status
	if st.Status != state.StatusStopped {
		st.Pid = rec.Shim.Pid
	}
	return st, nil
}

// daemonExitGrace is how long a daemon that stopped answering gets to finish exiting
// before its silence is taken for a failure rather than its end; stateTimeout bounds the
// question.
var (
	daemonExitGrace = 2 * time.Second
	stateTimeout    = 10 * time.Second
)

// podStatus is the container's status as its pod daemon knows it.
func podStatus(rec *state.Container) (string, error) {
	if !daemonAlive(rec) {
		return state.StatusStopped, nil
	}
	pod, err := dialPod(rec.PodDir)
	if err == nil {
		ctx, cancel := ctxTimeout(stateTimeout)
		var cs *podapi.ContainerState
		cs, err = pod.api.State(ctx, &podapi.ContainerRequest{Id: rec.ID})
		cancel()
		pod.Close()
		if err == nil {
			return cs.Status, nil
		}
		err = rpcErr(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return state.StatusStopped, nil // deleted in the pod, or never got there
		}
	}
	// The daemon removes its socket and stops answering as it exits: that is the end of the
	// pod, unless it outlives the grace.
	if waitGone(rec.Daemon, daemonExitGrace) == nil {
		return state.StatusStopped, nil
	}
	return "", fmt.Errorf("container %q: its pod daemon (pid %d) is running but does not answer: %w (it may be busy: try again; its log is %s)",
		rec.ID, rec.Daemon.Pid, err, filepath.Join(rec.PodDir, "daemon.log"))
}

var stateCommand = &cli.Command{
	Name:      "state",
	Usage:     "print the OCI state of a container",
	ArgsUsage: "<container-id>",
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		rec, err := loadRecord(g.store, id)
		if err != nil {
			return err
		}
		st, err := liveState(rec)
		if err != nil {
			return err
		}
		out, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return fmt.Errorf("container %q: state: %w", id, err)
		}
		fmt.Println(string(out))
		return nil
	},
}

var killCommand = &cli.Command{
	Name:      "kill",
	Usage:     "send a signal (default SIGTERM) to a container's process",
	ArgsUsage: "<container-id> [signal]",
	Flags:     []cli.Flag{&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "signal every process of the container"}},
	Action: func(c *cli.Context) error {
		if c.NArg() < 1 || c.NArg() > 2 {
			return fmt.Errorf("kill needs a container id and an optional signal; usage: runv kill [--all] <container-id> [signal]")
		}
		id := c.Args().Get(0)
		sig := unix.SIGTERM
		if c.NArg() == 2 {
			var err error
			if sig, err = parseSignal(c.Args().Get(1)); err != nil {
				return err
			}
		}
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		rec, err := loadRecord(g.store, id)
		if err != nil {
			return err
		}
		pod, err := dialLive(rec)
		if err != nil {
			if c.Bool("all") {
				return nil // its pod is gone: no process is left to signal (runc succeeds too)
			}
			return fmt.Errorf("cannot kill container %q: %w", id, errNotRunning)
		}
		defer pod.Close()
		ctx, cancel := ctxTimeout(30 * time.Second)
		defer cancel()
		if _, err := pod.api.Signal(ctx, &podapi.SignalRequest{Id: id, Signal: int32(sig), All: c.Bool("all")}); err != nil {
			err = rpcErr(err)
			if errors.Is(err, errdefs.ErrFailedPrecondition) {
				return fmt.Errorf("cannot kill container %q: %w", id, errNotRunning)
			}
			return fmt.Errorf("kill container %q: %w", id, err)
		}
		return nil
	},
}

// parseSignal accepts a number, or a name with or without the SIG prefix, in any case.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("invalid signal %q: numbers run from 1 to 64: %w", s, errdefs.ErrInvalidArgument)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q (try TERM, KILL, HUP, INT, USR1 or a number): %w", s, errdefs.ErrInvalidArgument)
}

var deleteCommand = &cli.Command{
	Name:      "delete",
	Usage:     "delete a stopped container and release its resources",
	ArgsUsage: "<container-id>",
	Flags:     []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "kill the container first if it is still running"}},
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		err = deleteContainer(c.Context, g, id, c.Bool("force"))
		sweepOrphanPods(c.Context, g)
		return err
	},
}

// sweepOrphanPods removes the pod directories left by pod daemons killed after their last
// container was deleted (poddaemon.SweepOrphans). It runs where nobody waits on the
// milliseconds (after a delete, in list), not in create or run. What it cannot remove is
// a warning: the command did what it was asked.
func sweepOrphanPods(ctx context.Context, g *globals) {
	if err := poddaemon.SweepRoot(g.store.Root); err != nil {
		logging.G(ctx).Warn("orphaned pod directories left", "error", err)
	}
}

// deleteContainer removes a container. With force a running container is killed first. When
// the pod daemon is gone (killed, crashed), what it would have cleaned up is cleaned up here.
//
// As with runc, --force on a container that does not exist succeeds (and removes what an
// aborted create left: a directory without a record): clients rely on it to clean up after
// a failed create (podman) and to delete twice (containerd's runc shim, whose cleanup runs
// `delete --force` after its own `delete`).
func deleteContainer(ctx context.Context, g *globals, id string, force bool) error {
	return removeContainer(ctx, g, id, force, nil)
}

// removeContainer is deleteContainer; podEmpty, when set, says that the pod daemon deleted
// the container already (a foreground run's Wait did, podapi.WaitRequest.delete_container)
// and whether that emptied the pod: what is left is the host's part.
func removeContainer(ctx context.Context, g *globals, id string, force bool, podEmptied *bool) error {
	h, err := g.store.Lock(id)
	if err != nil {
		if force && errors.Is(err, errdefs.ErrNotFound) {
			return g.store.RemoveOrphan(id)
		}
		return err
	}
	defer h.Unlock()
	rec, err := h.Load()
	if err != nil {
		if force && errors.Is(err, errdefs.ErrNotFound) {
			return h.Remove()
		}
		return err
	}
	podEmpty := true
	if podEmptied != nil {
		podEmpty = *podEmptied
	} else if daemonAlive(rec) {
		if podEmpty, err = deleteInPod(ctx, rec, force); err != nil {
			return err
		}
		logging.G(ctx).Debug("container deleted in its pod", "container", id, "pod_empty", podEmpty)
	}
	switch {
	case podEmpty && podEmptied != nil && endsOnItsOwn(rec):
		// The daemon deleted the container at its exit and is ending the pod: its VM was
		// killed, and it removes the pod's directory once QEMU is reaped (poddaemon.Serve).
		// Nothing of the container is left to wait for, and nothing of the host's for us
		// to release: QEMU's reaping (its address space: 8-12 ms) goes on after we return.
		logging.G(ctx).Debug("pod ending on its own", "container", id, "pod", rec.Pod)
	case podEmpty:
		// The daemon exits after the pod's last container; whatever it did or did not do,
		// nothing of the pod may remain then.
		if err := waitGone(rec.Daemon, 30*time.Second); err != nil {
			killProcess(rec.Daemon)
		}
		logging.G(ctx).Debug("pod daemon gone", "container", id, "pod", rec.Pod)
		if err := supervisor.CleanupPodDir(rec.PodDir); err != nil {
			return fmt.Errorf("delete container %q: %w", id, err)
		}
	}
	// The shims exit with their processes; one that does not (its daemon was killed
	// before it could tell) is of no use any more.
	for _, shim := range append([]state.Process{rec.Shim}, execProcesses(rec)...) {
		if shim.Pid != os.Getpid() && waitGone(shim, 10*time.Second) != nil {
			killProcess(shim)
		}
	}
	if err := rec.HostCgroup.Destroy(id, rec.Spec); err != nil {
		return fmt.Errorf("delete container %q: %w", id, err)
	}
	warnHooks(ctx, hookPoststop, hooksOf(rec.Spec, hookPoststop), hookState(rec, state.StatusStopped))
	return h.Remove()
}

// endsOnItsOwn reports whether the pod of a container the daemon deleted (the last one,
// at its exit: a foreground run) may end without us: nothing of the host's is left for
// this command to release or to see released first. The pod mirrors no network namespace
// (its taps must be gone before the caller reuses or removes that namespace), the
// container has no poststop hooks (runc runs them after the container's resources are
// gone) and no host cgroup of its own.
func endsOnItsOwn(rec *state.Container) bool {
	return podNetNS(rec) == "" && rec.HostCgroup == nil && len(hooksOf(rec.Spec, hookPoststop)) == 0
}

// deleteInPod has the pod daemon delete the container and reports whether the pod is now
// empty (its daemon then exits).
func deleteInPod(ctx context.Context, rec *state.Container, force bool) (empty bool, err error) {
	pod, err := dialPod(rec.PodDir)
	if err != nil {
		// Only a missing socket fails a dial: the daemon is gone or going, and the caller
		// cleans up after it.
		logging.G(ctx).Debug("pod daemon gone meanwhile", "container", rec.ID, "reason", err)
		return true, nil
	}
	defer pod.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// Delete first: the daemon refuses a running or paused container (a failed
	// precondition) and only then is its status asked, to kill it (--force) or to say why
	// not. A stopped one, the common case, takes one call.
	_, err = pod.api.Delete(cctx, &podapi.ContainerRequest{Id: rec.ID})
	if err == nil || errors.Is(rpcErr(err), errdefs.ErrNotFound) {
		return podIsEmpty(cctx, pod)
	}
	if !errors.Is(rpcErr(err), errdefs.ErrFailedPrecondition) {
		return false, fmt.Errorf("delete container %q: %w", rec.ID, rpcErr(err))
	}
	cs, err := pod.api.State(cctx, &podapi.ContainerRequest{Id: rec.ID})
	if err != nil {
		if errors.Is(rpcErr(err), errdefs.ErrNotFound) {
			return podIsEmpty(cctx, pod)
		}
		return false, fmt.Errorf("delete container %q: %w", rec.ID, rpcErr(err))
	}
	if cs.Status == state.StatusRunning || cs.Status == state.StatusPaused {
		if !force {
			return false, fmt.Errorf("cannot delete container %q that is not stopped: %s (stop it with 'runv kill' or use 'runv delete --force'): %w", rec.ID, cs.Status, errdefs.ErrFailedPrecondition)
		}
		kctx, kcancel := context.WithTimeout(cctx, forceKillTimeout)
		err := killInPod(kctx, pod, rec.ID, cs.Status)
		kcancel()
		if err != nil {
			if kctx.Err() == nil {
				return false, fmt.Errorf("delete container %q: %w", rec.ID, err)
			}
			// The guest does not carry out a SIGKILL (hung, or hostile): nothing of the
			// container can be removed through it, and the pod is of no use any more. The
			// pod daemon goes, and its VM with it; the caller cleans up after them, as
			// after a killed daemon. The pod's other containers are then stopped.
			logging.G(ctx).Warn("the guest did not kill the container in time: ending its pod",
				"container", rec.ID, "pod", filepath.Base(rec.PodDir), "after", forceKillTimeout, "error", err)
			killProcess(rec.Daemon)
			return true, nil
		}
	}
	// Stopped by now (killed, or it ended between the two calls).
	if _, err := pod.api.Delete(cctx, &podapi.ContainerRequest{Id: rec.ID}); err != nil && !errors.Is(rpcErr(err), errdefs.ErrNotFound) {
		return false, fmt.Errorf("delete container %q: %w", rec.ID, rpcErr(err))
	}
	return podIsEmpty(cctx, pod)
}

// forceKillTimeout bounds how long `delete --force` waits for the guest to kill a
// container before it ends the whole pod instead: the bound runv's shim and the pod's
// supervisor keep for a SIGKILL.
const forceKillTimeout = supervisor.GuestKillTimeout

// killInPod kills every process of a running or paused container and waits until it died.
// A container that stopped meanwhile is fine (the calls then fail as not running).
func killInPod(ctx context.Context, pod *podConn, id, status string) error {
	gone := func(err error) bool {
		err = rpcErr(err)
		return errors.Is(err, errdefs.ErrFailedPrecondition) || errors.Is(err, errdefs.ErrNotFound)
	}
	if status == state.StatusPaused {
		// A frozen process does not die of SIGKILL until it is thawed.
		if _, err := pod.api.Resume(ctx, &podapi.ContainerRequest{Id: id}); err != nil && !gone(err) {
			return fmt.Errorf("resume it to kill it: %w", rpcErr(err))
		}
	}
	if _, err := pod.api.Signal(ctx, &podapi.SignalRequest{Id: id, Signal: int32(unix.SIGKILL), All: true}); err != nil && !gone(err) {
		return fmt.Errorf("kill it: %w", rpcErr(err))
	}
	if _, err := pod.api.Wait(ctx, &podapi.WaitRequest{Id: id}); err != nil {
		return fmt.Errorf("waiting for it to die: %w", rpcErr(err))
	}
	return nil
}

// podIsEmpty reports whether the pod has no containers left. A daemon that refuses the
// call is going away (it stops serving once its last container is deleted): empty. One
// that does not answer in time is an error: it is busy, not gone.
func podIsEmpty(ctx context.Context, pod *podConn) (bool, error) {
	info, err := pod.api.Info(ctx, &podapi.Empty{})
	if err != nil {
		if errors.Is(rpcErr(err), errdefs.ErrUnavailable) {
			return true, nil
		}
		return false, fmt.Errorf("pod daemon in %s: %w", pod.dir, rpcErr(err))
	}
	return len(info.Containers) == 0, nil
}

func killProcess(p state.Process) {
	if p.Alive() {
		unix.Kill(p.Pid, unix.SIGKILL)
	}
}
