package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
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
	id := c.Args().First()
	if err := state.ValidateID(id); err != nil {
		return "", err
	}
	return id, nil
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
}

// createContainer creates a container and records it. On failure it leaves nothing behind:
// no state directory, no daemon, no VM.
func createContainer(ctx context.Context, g *globals, id string, o createOptions) (res *created, err error) {
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
	defer func() {
		if err != nil {
			term.Close()
		}
	}()
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
	defer h.Unlock()
	var daemon state.Process
	var startedDaemon bool
	podID := newPodID()
	podDir := g.store.PodDir(podID)
	sandbox := ""
	if member != nil {
		if !daemonAlive(member) {
			h.Remove()
			return nil, fmt.Errorf("cannot add container %q to the pod of %q: that pod is stopped: %w", id, member.ID, errdefs.ErrFailedPrecondition)
		}
		podID, podDir, daemon, sandbox = member.Pod, member.PodDir, member.Daemon, member.ID
	}
	var pod *podConn
	defer func() {
		if err == nil {
			return
		}
		if pod != nil {
			pod.Close()
		}
		if member == nil {
			// A pod made for this container goes with it, also when its daemon never
			// started (startDaemon made the directory).
			if startedDaemon {
				if p, _ := os.FindProcess(daemon.Pid); p != nil {
					p.Signal(os.Interrupt)
				}
				if werr := waitGone(daemon, 15*time.Second); werr != nil {
					if p, _ := os.FindProcess(daemon.Pid); p != nil {
						p.Kill()
					}
				}
			}
			supervisor.CleanupPodDir(podDir)
		}
		h.Remove()
	}()

	if member == nil {
		if daemon, err = startDaemon(g, podID, podDir); err != nil {
			return nil, err
		}
		startedDaemon = true
	}
	pod, err = dialPod(podDir)
	if err != nil {
		return nil, err
	}
	stdin, stdout, stderr := os.Stdin, os.Stdout, os.Stderr
	if term != nil {
		stdin, stdout, stderr = term.stdio()
	}
	stdio, err := pod.sendStdio(stdin, stdout, stderr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	resp, err := pod.api.Create(rctx, &podapi.CreateRequest{Id: id, Bundle: bundle, Spec: raw, Stdio: stdio, Sandbox: sandbox, Console: term.size()})
	if err != nil {
		return nil, fmt.Errorf("create container %q: %w", id, rpcErr(err))
	}
	logging.G(ctx).Debug("container created", "container", id, "pod", podID, "guest_pid", resp.GuestPid)

	rec := &state.Container{
		ID: id, Bundle: bundle, Rootfs: oci.RootfsOf(bundle, spec), Annotations: spec.Annotations,
		Created: time.Now().UTC(), Pod: podID, PodDir: podDir, Sandbox: member == nil,
		Daemon: daemon, Spec: spec,
	}
	defer func() {
		if err != nil {
			discardContainer(pod, id)
		}
	}()
	if o.shim {
		var ctty *os.File
		if term != nil {
			ctty = term.pty.slave
		}
		// No := here: the cleanup below must see the function's err.
		var initShim state.Process
		if initShim, err = spawnShim(ctx, g, pod, rec, "", ctty, shim.ForSpec(spec)); err != nil {
			return nil, err
		}
		rec.Shim = initShim
		defer func() {
			if err != nil {
				// Told by the pod daemon that its container is gone, it would exit
				// soon; its cgroup can only go once it has.
				killProcess(initShim)
				waitGone(initShim, 10*time.Second)
				rec.HostCgroup.Destroy(id, spec)
			}
		}()
		if rec.HostCgroup, err = shim.CreateCgroup(id, spec, g.systemdCgroup, initShim.Pid); err != nil {
			return nil, err
		}
	} else {
		// A foreground run stands in for the container's init itself.
		if err = pod.watchStandIn(ctx, id, "", os.Getpid()); err != nil {
			return nil, err
		}
		rec.Shim = state.Self()
	}
	// The daemon and the shim hold the slave now; the master's holder must see the
	// output end when they close theirs.
	term.closeSlave()
	if err := runCreateHooks(ctx, rec); err != nil {
		return nil, err
	}
	if err := term.sendMaster(); err != nil {
		return nil, err
	}
	if o.pidFile != "" {
		if err := writePidFile(o.pidFile, rec.Shim.Pid); err != nil {
			return nil, err
		}
	}
	if err := h.Save(rec); err != nil {
		return nil, err
	}
	if o.shim {
		term.Close()
		term = nil
	}
	return &created{rec: rec, pod: pod, term: term}, nil
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
	if err := state.WriteFileAtomic(path, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	return nil
}

var errNotRunning = errors.New("container not running")
