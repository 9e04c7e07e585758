package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

// OCI hooks run on the host, in the runv command that reaches the hook's point of the
// lifecycle, exactly as runc runs them: the hook's path, args and env (no env: runv's own,
// as with runc), the container's OCI state as JSON on stdin, killed after its timeout.
//
//	prestart, createRuntime   `runv create` (and run), once the container exists in the VM,
//	                          before create returns; a failure fails create, which then
//	                          removes everything it made (runc semantics)
//	poststart                 `runv start` (and run), after the process started; a failure
//	                          is logged as a warning
//	poststop                  `runv delete` (and run, after the exit); a failure is logged
//	createContainer,          not run: they must run inside the container's namespaces,
//	startContainer            which are in the VM (guest kernel), where no host binary
//	                          can run; create logs a warning naming them
//
// The state's pid is the shim's (the host process standing in for the container's init),
// not a process in the container: a hook that enters /proc/<pid>/ns/* enters the host's
// namespaces, not the container's. See docs/oci-compliance.md.

// Hook kinds, as config.json names them.
const (
	hookPrestart        = "prestart"
	hookCreateRuntime   = "createRuntime"
	hookCreateContainer = "createContainer"
	hookStartContainer  = "startContainer"
	hookPoststart       = "poststart"
	hookPoststop        = "poststop"
)

// hooksOf returns the hooks of one kind from a spec.
func hooksOf(spec *specs.Spec, kind string) []specs.Hook {
	if spec == nil || spec.Hooks == nil {
		return nil
	}
	h := spec.Hooks
	switch kind {
	case hookPrestart:
		return h.Prestart //nolint:staticcheck // deprecated in the spec, still used (docker)
	case hookCreateRuntime:
		return h.CreateRuntime
	case hookCreateContainer:
		return h.CreateContainer
	case hookStartContainer:
		return h.StartContainer
	case hookPoststart:
		return h.Poststart
	case hookPoststop:
		return h.Poststop
	}
	return nil
}

// hookState is the state a hook reads on stdin. A stopped container has no pid.
func hookState(rec *state.Container, status string) specs.State {
	st := specs.State{
		Version: ociVersion, ID: rec.ID, Status: specs.ContainerState(status),
		Bundle: rec.Bundle, Annotations: rec.Annotations,
	}
	if rec.Spec != nil && rec.Spec.Version != "" {
		st.Version = rec.Spec.Version
	}
	if status != state.StatusStopped {
		st.Pid = rec.Shim.Pid
	}
	return st
}

// runCreateHooks runs the prestart and createRuntime hooks of a container that now exists
// in its pod (status "creating", as runc reports it to them), and warns about the hooks runv
// cannot run.
func runCreateHooks(ctx context.Context, rec *state.Container) error {
	warnGuestHooks(ctx, rec.Spec, rec.ID)
	st := hookState(rec, state.StatusCreating)
	for _, kind := range []string{hookPrestart, hookCreateRuntime} {
		if err := runHooks(ctx, kind, hooksOf(rec.Spec, kind), st); err != nil {
			return fmt.Errorf("create container %q: %w", rec.ID, err)
		}
	}
	return nil
}

// discardContainer undoes a create whose last steps failed: the pod daemon kills the
// container's init and removes the container (a pod left empty shuts itself down).
func discardContainer(pod *podConn, id string) {
	ctx, cancel := ctxTimeout(time.Minute)
	defer cancel()
	_, err := pod.api.Delete(ctx, &podapi.ContainerRequest{Id: id})
	if errors.Is(rpcErr(err), errdefs.ErrFailedPrecondition) {
		// Started with its Create (startsWithCreate): killed first.
		pod.api.Signal(ctx, &podapi.SignalRequest{Id: id, Signal: int32(unix.SIGKILL), All: true})
		pod.api.Wait(ctx, &podapi.WaitRequest{Id: id})
		_, err = pod.api.Delete(ctx, &podapi.ContainerRequest{Id: id})
	}
	if err != nil {
		logging.G(ctx).Warn("remove the container of a failed create", "container", id, "error", rpcErr(err))
	}
}

// runHooks runs the hooks of one kind in order and stops at the first failure.
func runHooks(ctx context.Context, kind string, hooks []specs.Hook, st specs.State) error {
	if len(hooks) == 0 {
		return nil
	}
	in, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode the state for %s hooks: %w", kind, err)
	}
	for i, h := range hooks {
		logging.G(ctx).Debug("running hook", "kind", kind, "index", i, "path", h.Path, "container", st.ID)
		if err := runHook(ctx, h, in); err != nil {
			return fmt.Errorf("%s hook #%d (%s) of container %q: %w", kind, i, h.Path, st.ID, err)
		}
	}
	return nil
}

// warnHooks runs hooks whose failure must not change the outcome (poststart, poststop: the
// runtime spec says to log a warning and carry on).
func warnHooks(ctx context.Context, kind string, hooks []specs.Hook, st specs.State) {
	if err := runHooks(ctx, kind, hooks, st); err != nil {
		logging.G(ctx).Warn("hook failed", "kind", kind, "container", st.ID, "error", err)
	}
}

// warnGuestHooks logs the hooks runv cannot run at all.
func warnGuestHooks(ctx context.Context, spec *specs.Spec, id string) {
	for _, kind := range []string{hookCreateContainer, hookStartContainer} {
		if n := len(hooksOf(spec, kind)); n > 0 {
			logging.G(ctx).Warn("hooks not run: they must run in the container's namespaces, which are inside the VM (see docs/oci-compliance.md)",
				"kind", kind, "count", n, "container", id)
		}
	}
}

// runHook runs one hook as runc's configs.Command.Run does.
func runHook(ctx context.Context, h specs.Hook, state []byte) error {
	var stdout, stderr bytes.Buffer
	cmd := &exec.Cmd{Path: h.Path, Args: h.Args, Env: h.Env, Stdin: bytes.NewReader(state), Stdout: &stdout, Stderr: &stderr}
	if len(cmd.Args) == 0 {
		cmd.Args = []string{h.Path}
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var timeout <-chan time.Time
	if h.Timeout != nil {
		t := time.NewTimer(time.Duration(*h.Timeout) * time.Second)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%w, stdout: %s, stderr: %s", err, stdout.String(), stderr.String())
		}
		return nil
	case <-timeout:
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("hook ran past specified timeout of %ds", *h.Timeout)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}
