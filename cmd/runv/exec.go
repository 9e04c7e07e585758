package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/shim"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

// execFailedCode is runc's exit code for an exec that could not be set up ("exec failed:").
const execFailedCode = 255

var execCommand = &cli.Command{
	Name:  "exec",
	Usage: "run a new process inside a container",
	ArgsUsage: `<container-id> <command> [args...]  ||  -p process.json <container-id>

   The process starts from the container's config.json process (env, user, capabilities,
   cwd, rlimits...) with <command> as its args and the options below applied, or is read
   whole from --process. Without --detach runv stays attached: its stdio is the process's,
   signals it gets are forwarded, and it exits with the process's exit code.`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "console-socket", Usage: "unix socket that receives the pty master of a --tty process (with --detach)"},
		&cli.StringFlag{Name: "pidfd-socket", Usage: "not supported: the process runs in a VM, the host has no pidfd for it"},
		&cli.StringFlag{Name: "cwd", Usage: "current working directory in the container"},
		// Repeatable flags whose two names may be mixed on one command line, as runc allows
		// (`-e A=1 --env B=2`), are two flags each: urfave/cli v2 refuses mixed forms.
		&cli.StringSliceFlag{Name: "env", Usage: "set an environment variable (NAME=value; repeatable)"},
		&cli.StringSliceFlag{Name: "e", Usage: "same as --env"},
		&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "allocate a pseudo-TTY"},
		&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "UID (format: <uid>[:<gid>])"},
		&cli.Int64SliceFlag{Name: "additional-gids", Usage: "additional gids (repeatable)"},
		&cli.Int64SliceFlag{Name: "g", Usage: "same as --additional-gids"},
		&cli.StringFlag{Name: "process", Aliases: []string{"p"}, Usage: "path to a process.json (an OCI process object)"},
		&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "detach from the process (a shim stands in for it)"},
		&cli.StringFlag{Name: "pid-file", Usage: "file to write the process id (of the process's shim) to"},
		&cli.StringFlag{Name: "process-label", Usage: "SELinux label of the process (the guest kernel has no SELinux: refused)"},
		&cli.StringFlag{Name: "apparmor", Usage: "AppArmor profile of the process (the guest kernel has no AppArmor: refused)"},
		&cli.BoolFlag{Name: "no-new-privs", Usage: "set the no new privileges value for the process"},
		&cli.StringSliceFlag{Name: "cap", Usage: "add a capability to the bounding, effective and permitted sets (repeatable)"},
		&cli.StringSliceFlag{Name: "c", Usage: "same as --cap"},
		&cli.IntFlag{Name: "preserve-fds", Usage: "accepted for runc compatibility; extra descriptors cannot cross into the VM"},
		&cli.StringSliceFlag{Name: "cgroup", Usage: "not supported: the container's cgroup is in the VM"},
		&cli.BoolFlag{Name: "ignore-paused", Usage: "accepted for runc compatibility; a paused container still refuses exec (its cgroup is frozen in the VM)"},
	},
	Action: func(c *cli.Context) error {
		// A command line without a container is a usage error (exit 1); anything that
		// fails once runv tries to run the process is runc's "exec failed" (exit 255).
		if c.NArg() < 1 {
			return usageError("exec", "[options] <container-id> <command> [args...]", "exec needs a container id")
		}
		code, err := execProcess(c)
		switch {
		case errors.Is(err, errdefs.ErrNotExecutable):
			// As `run` and a shell do: 127 when the program is missing, 126 when it
			// cannot run. (runc would exit 255.)
			printError(fmt.Errorf("exec failed: %w", err))
			return exitError{notExecutableCode(err)}
		case err != nil:
			printError(fmt.Errorf("exec failed: %w", err))
			return exitError{execFailedCode}
		case code != 0:
			return exitError{code}
		}
		return nil
	},
}

// notExecutableCode is the shell's exit code for a program that could not be run.
func notExecutableCode(err error) int {
	if strings.Contains(err.Error(), "permission denied") {
		return 126
	}
	return 127
}

// newExecID names an exec'd process: unique in its container, and recognisable in logs.
func newExecID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}

// execProcess runs the exec command and returns the process's exit code (0 when detached).
func execProcess(c *cli.Context) (int, error) {
	id := c.Args().First()
	g, err := globalsFrom(c)
	if err != nil {
		return 0, err
	}
	if err := unsupportedFlags(c, "pidfd-socket", "cgroup"); err != nil {
		return 0, err
	}
	if n := c.Int("preserve-fds"); n > 0 {
		logging.G(c.Context).Warn("--preserve-fds ignored: descriptors cannot cross into the VM", "count", n)
	}
	o := execOptions{
		id: newExecID(), detach: c.Bool("detach"), consoleSocket: c.String("console-socket"), pidFile: c.String("pid-file"),
	}
	if !o.detach {
		// Caught while the record is read and the pod dialled (newAttachment waits for it).
		o.signals = catchSignals()
		defer o.signals.Release()
	}
	// The pod daemon refuses an exec into a stopped or paused container itself, so the
	// container's status is asked for only once something failed: runc checks it first, and
	// its words for a stopped or paused container come before any other error.
	ignorePaused := c.Bool("ignore-paused")
	rec, p, err := prepareExec(c, g.store, id, o.id, !o.detach)
	if err != nil {
		if rec == nil {
			return 0, err // no record to ask about (an unknown container)
		}
		return 0, execStatusOr(rec, ignorePaused, err)
	}
	x, err := startExec(c.Context, g, rec, p, o)
	if err != nil {
		return 0, execStatusOr(rec, ignorePaused, err)
	}
	defer x.close()
	logging.G(x.ctx).Debug("exec: process started", "since_cli_start", time.Since(started))
	if x.att == nil {
		return 0, nil // detached: its shim stands in for it
	}
	code, err := x.att.wait(x.ctx)
	logging.G(x.ctx).Debug("exec: process exited", "since_cli_start", time.Since(started), "exit_code", code)
	return code, err
}

// execStatusOr returns the refusal of an exec into a stopped or paused container, in runc's
// words, in place of err, the failure that made it ask; err when the container's status
// allows an exec.
func execStatusOr(rec *state.Container, ignorePaused bool, err error) error {
	if serr := checkExecStatus(rec, ignorePaused); serr != nil {
		return serr
	}
	return err
}

// checkExecStatus refuses an exec into a stopped or paused container in runc's words.
func checkExecStatus(rec *state.Container, ignorePaused bool) error {
	live, err := liveState(rec)
	if err != nil {
		return err
	}
	switch live.Status {
	case state.StatusStopped:
		return fmt.Errorf("container %q: %w", rec.ID, errExecStopped)
	case state.StatusPaused:
		if !ignorePaused {
			return fmt.Errorf("container %q: %w", rec.ID, errExecPaused)
		}
		return fmt.Errorf("container %q: cannot exec in a paused container: runv cannot start a process in its frozen cgroup, even with --ignore-paused (resume it first): %w", rec.ID, errdefs.ErrFailedPrecondition)
	}
	return nil
}

type execOptions struct {
	id            string // the exec id (newExecID)
	detach        bool
	consoleSocket string
	pidFile       string
	signals       *caughtSignals // a foreground exec's (catchSignals)
}

// execution is an exec'd process that runs, and what the command holds for it.
type execution struct {
	ctx  context.Context // names the container and the process
	pod  *podConn
	term *procTerminal
	// att relays signals and stdio to a foreground process; nil when detached.
	att *attachment
}

func (x *execution) close() {
	if x.att != nil {
		x.att.Close()
	}
	x.pod.Close()
	x.term.Close()
}

// startExec starts process p in the container, in named steps, and gives it its stand-in:
// a shim when detached, this process in the foreground. If a step fails, what the earlier
// ones made is undone, latest first, the process in the VM killed if it was started.
func startExec(ctx context.Context, g *globals, rec *state.Container, p *specs.Process, o execOptions) (_ *execution, err error) {
	var undo cleanups
	defer undo.run(&err)
	if !o.detach {
		// prepareExec recorded this process as the stand-in.
		undo.onFailure(func() { forgetExec(g.store, rec.ID, o.id) })
	}
	// Not the named result: the cleanups must see what was made, also once a return cleared it.
	x := &execution{}
	if x.term, err = prepareTerminal(p, o.detach, o.consoleSocket); err != nil {
		return nil, err
	}
	undo.onFailure(x.term.Close)
	if x.pod, err = dialLive(rec); err != nil {
		return nil, fmt.Errorf("container %q: %w", rec.ID, errExecStopped)
	}
	undo.onFailure(func() { x.pod.Close() })
	execID := o.id
	x.ctx = logging.With(ctx, "container", rec.ID, "process", execID)
	if !o.detach {
		// Signals are caught from before the process exists, so none sent meanwhile is lost.
		x.att = newAttachment(x.pod, rec.ID, execID, o.signals)
		undo.onFailure(x.att.Close)
	}
	if err := execInPod(x.ctx, x.pod, rec.ID, execID, p, x.term, !o.detach); err != nil {
		return nil, err
	}
	// From here on the process runs: a failure must not leave it behind.
	undo.onFailure(func() {
		kctx, cancel := ctxTimeout(10 * time.Second)
		defer cancel()
		x.pod.api.Signal(kctx, &podapi.SignalRequest{Id: rec.ID, Process: execID, Signal: int32(unix.SIGKILL)})
	})
	standIn := execForeground
	if o.detach {
		standIn = execDetached
	}
	pid, err := standIn(x, g, rec, execID)
	if err != nil {
		return nil, err
	}
	if o.pidFile != "" {
		if err := writePidFile(o.pidFile, pid); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// execInPod has the pod daemon start the process, with our stdio or the terminal's, and
// this process as its stand-in when it runs in the foreground.
func execInPod(ctx context.Context, pod *podConn, id, execID string, p *specs.Process, term *procTerminal, foreground bool) error {
	stdin, stdout, stderr := os.Stdin, os.Stdout, os.Stderr
	if term != nil {
		stdin, stdout, stderr = term.stdio()
	}
	stdio, err := pod.sendStdio(stdin, stdout, stderr, foreground)
	if err != nil {
		return err
	}
	spec, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode the process: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := pod.api.Exec(rctx, &podapi.ExecRequest{Id: id, Process: execID, ProcessSpec: spec, Stdio: stdio, Console: term.size()})
	if err != nil {
		return fmt.Errorf("exec in container %q: %w", id, rpcErr(err))
	}
	if foreground && !resp.StandInWatched {
		// A pod daemon of an older runv (started before an upgrade) ignored the pidfd.
		if err := pod.watchStandIn(ctx, id, execID, os.Getpid()); err != nil {
			pod.api.Signal(rctx, &podapi.SignalRequest{Id: id, Process: execID, Signal: int32(unix.SIGKILL)})
			return err
		}
	}
	return nil
}

// execDetached gives a detached process its shim, in the container's host namespaces and
// cgroup as its init's shim is, hands the terminal's master over, and records the process.
// It returns the shim's pid.
func execDetached(x *execution, g *globals, rec *state.Container, execID string) (int, error) {
	var ctty *os.File
	if x.term != nil {
		ctty = x.term.pty.slave
	}
	var ns shim.Namespaces
	if rec.Shim.Alive() {
		var err error
		if ns, err = shim.Of(rec.Shim.Pid); err != nil {
			return 0, err
		}
	}
	sh, err := spawnShim(x.ctx, g, x.pod, rec, execID, ctty, ns)
	if err != nil {
		return 0, err
	}
	if err := rec.HostCgroup.Add(sh.Pid); err != nil {
		return 0, err
	}
	x.term.closeSlave()
	if err := x.term.sendMaster(); err != nil {
		return 0, err
	}
	if err := recordExec(g.store, rec.ID, execID, sh); err != nil {
		return 0, err
	}
	return sh.Pid, nil
}

// execForeground makes this process the foreground process's stand-in (its pid is the one
// a client may signal, recorded by prepareExec, and the daemon watches since the Exec call),
// with the user's terminal attached.
func execForeground(x *execution, g *globals, rec *state.Container, execID string) (int, error) {
	x.term.closeSlave()
	if x.term != nil {
		var err error
		if x.att.fg, err = attachForeground(x.term); err != nil {
			return 0, err
		}
	}
	return os.Getpid(), nil
}

// execSpec builds the exec'd process as runc does: read whole from --process, or the
// container's config.json process with the command line's args and overrides.
func execSpec(c *cli.Context, rec *state.Container) (*specs.Process, error) {
	if path := c.String("process"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--process: %w", err)
		}
		var p specs.Process
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("--process %s is not an OCI process object: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
		return &p, validateProcess(&p, "--process "+path)
	}
	if c.NArg() < 2 {
		return nil, usageError("exec", "[options] <container-id> <command> [args...]", "exec args cannot be empty: name the command to run in container %q (or pass --process)", rec.ID)
	}
	if rec.Spec == nil || rec.Spec.Process == nil {
		return nil, fmt.Errorf("container %q has no recorded process to start from; pass --process: %w", rec.ID, errdefs.ErrFailedPrecondition)
	}
	b, _ := json.Marshal(rec.Spec.Process)
	var p specs.Process // a deep copy: the record's spec stays as created
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("copy the process of container %q: %w", rec.ID, err)
	}
	p.Args = c.Args().Slice()[1:]
	if cwd := c.String("cwd"); cwd != "" {
		p.Cwd = cwd
	}
	if l := c.String("apparmor"); l != "" {
		p.ApparmorProfile = l
	}
	if l := c.String("process-label"); l != "" {
		p.SelinuxLabel = l
	}
	if caps := append(c.StringSlice("cap"), c.StringSlice("c")...); len(caps) > 0 {
		if p.Capabilities == nil {
			p.Capabilities = &specs.LinuxCapabilities{}
		}
		for _, cp := range caps {
			cp = strings.ToUpper(cp)
			if !strings.HasPrefix(cp, "CAP_") {
				cp = "CAP_" + cp
			}
			p.Capabilities.Bounding = append(p.Capabilities.Bounding, cp)
			p.Capabilities.Effective = append(p.Capabilities.Effective, cp)
			p.Capabilities.Permitted = append(p.Capabilities.Permitted, cp)
			// As runc: ambient only when the spec has inheritable bits to go with it.
			if p.Capabilities.Inheritable != nil {
				p.Capabilities.Ambient = append(p.Capabilities.Ambient, cp)
			}
		}
	}
	p.Env = append(append(p.Env, c.StringSlice("env")...), c.StringSlice("e")...)
	// As runc: no terminal unless asked for, whatever config.json says.
	p.Terminal = c.Bool("tty")
	p.ConsoleSize = nil
	if c.IsSet("no-new-privs") {
		p.NoNewPrivileges = c.Bool("no-new-privs")
	}
	if u := c.String("user"); u != "" {
		uid, gid, hasGID := strings.Cut(u, ":")
		n, err := strconv.ParseUint(uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--user %q: bad uid %q: use <uid>[:<gid>] with numbers: %w", u, uid, errdefs.ErrInvalidArgument)
		}
		p.User.UID = uint32(n)
		if hasGID {
			n, err := strconv.ParseUint(gid, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("--user %q: bad gid %q: use <uid>[:<gid>] with numbers: %w", u, gid, errdefs.ErrInvalidArgument)
			}
			p.User.GID = uint32(n)
		}
	}
	for _, gid := range append(c.Int64Slice("additional-gids"), c.Int64Slice("g")...) {
		if gid < 0 || gid > 1<<32-1 {
			return nil, fmt.Errorf("--additional-gids %d: must be a gid, 0 to 4294967295: %w", gid, errdefs.ErrInvalidArgument)
		}
		p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(gid))
	}
	return &p, validateProcess(&p, "exec")
}

// validateProcess is runc's validateProcessSpec, plus what the guest cannot do.
func validateProcess(p *specs.Process, where string) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s: %w", where, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	switch {
	case len(p.Args) == 0:
		return invalid("args must not be empty")
	case p.Cwd == "":
		return invalid("cwd must not be empty")
	case !filepath.IsAbs(p.Cwd):
		return invalid("cwd %q must be an absolute path", p.Cwd)
	case p.SelinuxLabel != "":
		return invalid("selinux label %q is specified, but the guest kernel has no SELinux", p.SelinuxLabel)
	case p.ApparmorProfile != "":
		return invalid("apparmor profile %q is specified, but the guest kernel has no AppArmor", p.ApparmorProfile)
	}
	return nil
}

// prepareExec reads the container's record, builds the process from it (execSpec) and,
// for a foreground exec, records this process as its stand-in — before the process exists,
// so that whoever lists the container's processes once it runs finds it — all under one
// hold of the container's lock: the lock and the record's JSON are most of the CLI's own
// share of an exec, so the record is read and written once. rec is nil when there is no
// record to read.
func prepareExec(c *cli.Context, store *state.Store, id, execID string, foreground bool) (rec *state.Container, p *specs.Process, err error) {
	h, err := store.Lock(id)
	if err != nil {
		return nil, nil, err
	}
	defer h.Unlock()
	if rec, err = h.Load(); err != nil {
		return nil, nil, err
	}
	if p, err = execSpec(c, rec); err != nil {
		return rec, nil, err
	}
	if foreground {
		if err := saveExec(h, rec, execID, state.Self()); err != nil {
			return rec, nil, err
		}
	}
	return rec, p, nil
}

// recordExec adds an exec'd process's host stand-in to the container's record (for ps,
// and for delete to reap).
func recordExec(store *state.Store, id, execID string, p state.Process) error {
	h, err := store.Lock(id)
	if err != nil {
		return err
	}
	defer h.Unlock()
	rec, err := h.Load()
	if err != nil {
		return err
	}
	return saveExec(h, rec, execID, p)
}

// saveExec adds p as the stand-in of execID to rec, dropping those that have exited, and
// saves rec through h, which holds the container's lock.
func saveExec(h *state.Handle, rec *state.Container, execID string, p state.Process) error {
	for k, v := range rec.Exec {
		if !v.Alive() {
			delete(rec.Exec, k)
		}
	}
	if rec.Exec == nil {
		rec.Exec = map[string]state.Process{}
	}
	rec.Exec[execID] = p
	return h.Save(rec)
}

// forgetExec removes the record of an exec that did not start. It is best effort: a record
// left behind names a dead process, which the next recordExec prunes.
func forgetExec(store *state.Store, id, execID string) {
	h, err := store.Lock(id)
	if err != nil {
		return
	}
	defer h.Unlock()
	if rec, err := h.Load(); err == nil {
		delete(rec.Exec, execID)
		h.Save(rec)
	}
}

// execProcesses returns the recorded host stand-ins of a container's exec'd processes,
// ordered by exec id.
func execProcesses(rec *state.Container) []state.Process {
	ids := make([]string, 0, len(rec.Exec))
	for id := range rec.Exec {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]state.Process, 0, len(ids))
	for _, id := range ids {
		out = append(out, rec.Exec[id])
	}
	return out
}

// attachment stands in for a process in the VM while it runs in the foreground (run, exec
// without -d): it forwards the signals runv receives, carries the user's terminal size
// into the VM, and waits for the exit.
type attachment struct {
	pod         *podConn
	id, process string
	caught      *caughtSignals
	sigs, winch <-chan os.Signal
	fg          *foreground // set for a terminal process
	// deleteAfter has the pod daemon delete the container once its init exited, in the
	// Wait call (a foreground run); podEmptied is then set, to whether the pod is empty.
	deleteAfter bool
	podEmptied  *bool
}

// caughtSignals are the signals a foreground runv catches to forward them. Catching all of
// them costs a round trip to the Go runtime's signal-mask thread per signal, 65 in all
// (1–3 ms idle, more under load: a tenth of a `runv exec`), and releasing them as many
// again: so both run in the background, the catch while runv prepares the process, the
// release while it ends (docs/performance.md, "`runv exec`, stop 13").
type caughtSignals struct {
	sigs, winch chan os.Signal
	caught      chan struct{} // closed once every signal is caught
	release     sync.Once
}

// catchSignals starts catching every signal in the background; ready waits until it is
// done, Release stops it.
func catchSignals() *caughtSignals {
	c := &caughtSignals{sigs: make(chan os.Signal, 64), winch: make(chan os.Signal, 1), caught: make(chan struct{})}
	go func() {
		signal.Notify(c.sigs)
		signal.Notify(c.winch, unix.SIGWINCH)
		close(c.caught)
	}()
	return c
}

// ready returns once every signal is caught.
func (c *caughtSignals) ready() { <-c.caught }

// Release stops catching signals, in the background: runv ends right after (a signal that
// arrives meanwhile is dropped, as one that arrives once forwarding stopped always was).
func (c *caughtSignals) Release() {
	if c == nil {
		return
	}
	c.release.Do(func() {
		go func() {
			<-c.caught
			signal.Stop(c.sigs)
			signal.Stop(c.winch)
		}()
	})
}

// newAttachment stands in with the signals of caught (catchSignals), once they are all
// caught; call it before the process starts.
func newAttachment(pod *podConn, id, process string, caught *caughtSignals) *attachment {
	caught.ready()
	return &attachment{pod: pod, id: id, process: process, caught: caught, sigs: caught.sigs, winch: caught.winch}
}

// wait returns the process's exit code once it exited and its output was delivered.
func (a *attachment) wait(ctx context.Context) (int, error) {
	stop := make(chan struct{})
	defer close(stop)
	go shim.ForwardSignals(a.pod.api, a.id, a.process, a.sigs, stop)
	if a.fg != nil {
		// The initial size went with the request; this follows the user's later resizes.
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-a.winch:
					a.fg.resize(ctx, a.pod, a.id, a.process)
				}
			}
		}()
	}
	w, err := a.pod.api.Wait(ctx, &podapi.WaitRequest{Id: a.id, Process: a.process, DeleteContainer: a.deleteAfter})
	if err != nil {
		return 137, fmt.Errorf("wait for process %q of container %q: %w", procName(a.process), a.id, rpcErr(err))
	}
	if w.Deleted {
		a.podEmptied = &w.PodEmpty
	}
	if w.Error != "" {
		a.fg.Close() // restore the terminal before printing
		fmt.Fprintf(os.Stderr, "runv: container %q process %q: %s\n", a.id, procName(a.process), w.Error)
	}
	return int(w.ExitCode), nil
}

// Close stops catching signals (in the background) and restores the user's terminal.
func (a *attachment) Close() {
	a.caught.Release()
	a.fg.Close()
	a.fg = nil
}

func procName(p string) string {
	if p == "" {
		return "init"
	}
	return p
}
