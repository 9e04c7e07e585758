package poddaemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/internal/fdpass"
	"github.com/runv-project/runv/internal/sockets"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// idleTimeout ends a daemon that was started but never got a container (its client died).
const idleTimeout = 2 * time.Minute

// Serve runs the pod daemon until its last container is deleted or it is told to stop
// (SIGTERM, SIGINT). It reports readiness on ready: "ok\n" once both sockets listen, or the
// error; the starter waits on that instead of polling for the socket.
func Serve(ctx context.Context, cfg supervisor.Config, ready io.WriteCloser) (err error) {
	ctx = logging.With(ctx, "pod", cfg.PodID)
	fail := func(err error) error {
		if ready != nil {
			fmt.Fprintf(ready, "error: %v\n", err)
			ready.Close()
		}
		return err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fail(fmt.Errorf("pod %s: %w", cfg.PodID, err))
	}
	// The supervisor first: it starts the VM's boot, which then overlaps making the
	// sockets (1-4 ms before QEMU's start otherwise).
	sup, err := supervisor.New(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	// Held until Serve returns, when the directory is gone, or the process dies: while it
	// is held, no sweep of orphaned pod directories (SweepOrphans) touches this one.
	lock, err := holdLock(cfg.Dir)
	if err != nil {
		return errors.Join(fail(fmt.Errorf("pod %s: %w", cfg.PodID, err)), endUnserved(ctx, sup, cfg.Dir))
	}
	defer runtime.KeepAlive(lock)
	stdio, err := fdpass.Listen(filepath.Join(cfg.Dir, podapi.StdioSocket))
	if err != nil {
		return errors.Join(fail(fmt.Errorf("pod %s: %w", cfg.PodID, err)), endUnserved(ctx, sup, cfg.Dir))
	}
	defer stdio.Close()
	ln, err := sockets.Listen(filepath.Join(cfg.Dir, podapi.APISocket))
	if err != nil {
		return errors.Join(fail(fmt.Errorf("pod %s: listen: %w", cfg.PodID, err)), endUnserved(ctx, sup, cfg.Dir))
	}
	g := grpc.NewServer()
	supervisor.Register(g, sup, stdio)
	go g.Serve(ln)
	if ready != nil {
		io.WriteString(ready, "ok\n")
		ready.Close()
	}
	logging.G(ctx).Info("pod daemon serving", "dir", cfg.Dir)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	defer signal.Stop(sigs)
	idle := time.NewTimer(idleTimeout)
	defer idle.Stop()
	for stop := false; !stop; {
		select {
		case <-sup.Empty():
			logging.G(ctx).Info("last container deleted; stopping pod")
			stop = true
		case sig := <-sigs:
			logging.G(ctx).Info("stopping pod on signal", "signal", sig)
			stop = true
		case <-idle.C:
			if !sup.EverHadContainer() {
				logging.G(ctx).Warn("no container was created; stopping pod", "after", idleTimeout)
				stop = true
			}
		case <-ctx.Done():
			stop = true
		}
	}
	closeErr := sup.Close(context.WithoutCancel(ctx))
	// Let in-flight calls (the Delete that emptied the pod) return before the socket goes.
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	// Everything of the pod goes with its daemon: a foreground run that ended the pod does
	// not wait for it (cmd/runv, endsOnItsOwn), and a create that failed, or a delete after
	// the daemon was killed, cleans up the same way (supervisor.CleanupPodDir).
	if err := supervisor.CleanupPodDir(cfg.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		closeErr = errors.Join(closeErr, err)
	}
	return closeErr
}

// endUnserved ends a pod whose daemon could not serve it (once the starter was told why):
// its VM, booting or booted, and everything of it in its directory go.
func endUnserved(ctx context.Context, sup *supervisor.Supervisor, dir string) error {
	return errors.Join(sup.Close(context.WithoutCancel(ctx)), supervisor.CleanupPodDir(dir))
}
