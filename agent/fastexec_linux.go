package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/sys/capability"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// The exec helper in the guest: packed by initrd/ into a directory of its own, which the
// agent bind-mounts read-only over itself at boot (sealExecHelper), so that no process —
// a container's that reopens /proc/<pid>/exe of a running helper included — can write to
// the binary (CVE-2019-5736).
const (
	execHelperDir  = "/libexec/runv"
	execHelperPath = execHelperDir + "/runv-exec"
)

// sealExecHelper makes the helper's directory a read-only mount. It returns the helper's
// path, or "" (and why) when execs go through libcontainer: no helper in the initramfs,
// or it could not be sealed.
func sealExecHelper() (string, error) {
	if _, err := os.Stat(execHelperPath); err != nil {
		return "", err
	}
	if err := unix.Mount(execHelperDir, execHelperDir, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind %s: %w", execHelperDir, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
	if err := unix.Mount("", execHelperDir, "", flags, ""); err != nil {
		_ = unix.Unmount(execHelperDir, unix.MNT_DETACH)
		return "", fmt.Errorf("remount %s read-only: %w", execHelperDir, err)
	}
	return execHelperPath, nil
}

// useExecHelper tells whether the exec helper starts lp in c (convert.FastExecFallback decides).
// A container the create engine made has no libcontainer state to exec through: an exec
// the helper does not do is refused there, naming why.
func (a *Agent) useExecHelper(c *container, lp *convert.Process) (bool, error) {
	if a.execHelper == "" {
		return false, nil
	}
	cfg := c.lc.Config()
	reason := convert.FastExecFallback(&cfg, lp)
	if reason == "" {
		return true, nil
	}
	if _, engine := c.lc.(*engineContainer); engine {
		return false, errorf(agentproto.KindInvalid, "container %q: the exec helper, which runs every exec of a container the create engine made, does not do %s", c.id, reason)
	}
	c.log.Debugf("exec through libcontainer's runc init: the helper does not do %s", reason)
	return false, nil
}

// fastExecState is what a container's execs through the helper share: computed at the
// first one.
type fastExecState struct {
	mu           sync.Mutex
	compiled     bool
	seccomp      []byte
	seccompFlags uint32
	seccompErr   error
	cgroupDir    string
	// server is the container's exec server (execServerOf), once serverTried.
	server      *execServer
	serverTried bool
}

// seccompProgram compiles the container's seccomp profile once.
func (c *container) seccompProgram(cfg *configs.Seccomp) ([]byte, uint32, error) {
	c.fast.mu.Lock()
	defer c.fast.mu.Unlock()
	if !c.fast.compiled {
		c.fast.seccomp, c.fast.seccompFlags, c.fast.seccompErr = compileSeccomp(cfg)
		c.fast.compiled = true
	}
	return c.fast.seccomp, c.fast.seccompFlags, c.fast.seccompErr
}

// cgroupDirs are the cgroups an exec'd process may start in, in libcontainer's order of
// preference: the container's, then the one its init is in now.
func (c *container) cgroupDirs() []string {
	c.fast.mu.Lock()
	if c.fast.cgroupDir == "" {
		if st, err := c.lc.State(); err == nil {
			c.fast.cgroupDir = st.CgroupPaths[""]
		}
	}
	dirs := []string{c.fast.cgroupDir}
	c.fast.mu.Unlock()
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(c.init.pid) + "/cgroup"); err == nil {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "0::"); ok {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", rest))
		}
	}
	return dirs
}

// lastCap is the highest capability the guest's kernel knows, what moby's
// capability.LastCap reads from /proc/sys/kernel/cap_last_cap, found with
// prctl(PR_CAPBSET_READ), which answers EINVAL for a capability past it: the sysctl's
// lookup and handler were ~80 translated blocks of a cold guest's first container.
var lastCap = sync.OnceValues(func() (capability.Cap, error) {
	known := func(c int) (bool, error) {
		_, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if err == unix.EINVAL {
			return false, nil
		}
		return err == nil, err
	}
	if ok, err := known(0); !ok {
		if err == nil {
			err = unix.EINVAL
		}
		return 0, fmt.Errorf("the last capability: prctl(PR_CAPBSET_READ, 0): %w", err)
	}
	lo, hi := 0, 63 // known(lo); capability sets are 64 bits
	for lo < hi {
		mid := (lo + hi + 1) / 2
		ok, err := known(mid)
		if err != nil {
			return 0, fmt.Errorf("the last capability: prctl(PR_CAPBSET_READ, %d): %w", mid, err)
		}
		if ok {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return capability.Cap(lo), nil
})

// buildExecRequest fills in the helper's request for an exec of lp in c, its guest's
// fields but the descriptors.
func (c *container) buildExecRequest(cfg *configs.Config, lp *convert.Process, rows, cols uint16) (*convert.ExecRequest, error) {
	req, err := convert.BuildExecRequest(c.id, cfg, lp, c.lateRlimits, c.seccompProgram, rows, cols)
	if err != nil {
		return nil, err
	}
	if req.LastCap, err = guestLastCap(); err != nil {
		return nil, err
	}
	return req, nil
}

// guestLastCap is the request's LastCap: the guest kernel's last capability.
func guestLastCap() (uint32, error) {
	last, err := lastCap()
	if err != nil {
		return 0, fmt.Errorf("capabilities: %w", err)
	}
	return uint32(last), nil
}

// execHelperWait bounds the helper's start: the pid, then the program's exec.
const execHelperWait = 10 * time.Second

// nsFile is an open namespace of the container's init and its CLONE_NEW* type.
type nsFile struct {
	nstype uint32
	f      *os.File
}

// fastExec starts lp in the running container c through the exec helper and returns the
// process (a child of the agent: the helper forks it with CLONE_PARENT), its program
// looked up at hint first (ExecProcess.ProgramHint): through the container's exec server (execserver_linux.go), started at its first exec, or else the
// one-shot helper. The caller holds the reaper's start bracket.
func (a *Agent) fastExec(c *container, lp *libcontainer.Process, cp *convert.Process, hint string, tr *stepTrace) (*childProcess, error) {
	cfg := c.lc.Config()
	req, err := c.buildExecRequest(&cfg, cp, lp.ConsoleHeight, lp.ConsoleWidth)
	if err != nil {
		return nil, err
	}
	req.ProgramHint = hint
	req.TraceSteps = tr != nil
	tr.mark("helper request built")
	if c.init.exited() {
		return nil, errorf(agentproto.KindState, "cannot exec in container %q: it is stopped", c.id)
	}
	console, _ := any(lp.ConsoleSocket).(*os.File)
	stdio := [3]*os.File{}
	for i, std := range []any{lp.Stdin, lp.Stdout, lp.Stderr} {
		stdio[i], _ = std.(*os.File)
	}
	if srv := a.execServerOf(c, &cfg, tr); srv != nil {
		proc, err := srv.exec(req, stdio, console, c.cgroupDirs(), tr)
		if !errors.Is(err, errServerGone) {
			return proc, err
		}
		c.log.Errorf("%v: execs go through the one-shot helper", err)
		c.stopExecServer()
	}
	namespaces, err := c.openNamespaces(&cfg)
	if err != nil {
		return nil, err
	}
	defer closeNamespaces(namespaces)
	tr.mark("namespaces opened")
	proc, _, err := runExecHelper(a.execHelper, req, stdio, namespaces, console, nil, c.cgroupDirs(), tr)
	return proc, err
}

// openNamespaces opens the namespaces of the container's init that cfg names.
func (c *container) openNamespaces(cfg *configs.Config) ([]nsFile, error) {
	var namespaces []nsFile
	initPid := strconv.Itoa(c.init.pid)
	for _, t := range configs.NamespaceTypes() {
		if !cfg.Namespaces.Contains(t) {
			continue
		}
		f, err := os.Open("/proc/" + initPid + "/ns/" + configs.NsName(t))
		if err != nil {
			closeNamespaces(namespaces)
			if c.init.exited() || errors.Is(err, os.ErrNotExist) {
				return nil, errorf(agentproto.KindState, "cannot exec in container %q: its init is gone", c.id)
			}
			return nil, fmt.Errorf("container %q: %w", c.id, err)
		}
		namespaces = append(namespaces, nsFile{nstype: uint32((&configs.Namespace{Type: t}).Syscall()), f: f})
	}
	return namespaces, nil
}

func closeNamespaces(namespaces []nsFile) {
	for _, ns := range namespaces {
		ns.f.Close()
	}
}

// execServerOf returns the container's exec server, started at its first exec; nil when
// there is none (it could not start, or it is gone): the exec then goes through the
// one-shot helper.
func (a *Agent) execServerOf(c *container, cfg *configs.Config, tr *stepTrace) *execServer {
	c.fast.mu.Lock()
	defer c.fast.mu.Unlock()
	if c.fast.serverTried {
		return c.fast.server
	}
	c.fast.serverTried = true
	if a.flags.OneShotExec {
		return nil
	}
	namespaces, err := c.openNamespaces(cfg)
	if err != nil {
		return nil // the exec fails the same way through the one-shot helper
	}
	defer closeNamespaces(namespaces)
	done := a.reaper.beginStart()
	srv, err := startExecServer(a.execHelper, namespaces, a.reaper.untrack)
	if err != nil {
		done(0)
		c.log.Errorf("%v: execs go through the one-shot helper", err)
		return nil
	}
	done(srv.pid)
	tr.mark("exec server started")
	c.fast.server = srv
	return srv
}

// releaseExecState lets go of what the container's execs hold: the PATH pins and the
// exec server. Called when the container goes.
func (c *container) releaseExecState() {
	c.pins.close()
	c.stopExecServer()
}

// stopExecServer ends the container's exec server, if it has one, and starts no other:
// called once the container's init exited (nothing can be exec'd any more, and the server
// would keep its namespaces) and when the container goes.
func (c *container) stopExecServer() {
	c.fast.mu.Lock()
	srv := c.fast.server
	c.fast.server, c.fast.serverTried = nil, true
	c.fast.mu.Unlock()
	srv.stop()
}

// runExecHelper starts the helper in the first cgroup of dirs that takes it, with the
// process's stdio (nil: /dev/null), the namespaces and the console socket (nil: no
// terminal), sends it req and waits until the process exec'd its program: it returns the
// process, or the helper's report of the step that failed. In create mode (req.Create)
// start is the read end of the start pipe; it waits until the container's init is ready
// instead and also returns the report pipe, which tells when the init exec'd
// (awaitExec).
func runExecHelper(helperPath string, req *convert.ExecRequest, stdio [3]*os.File, namespaces []nsFile, console, start *os.File, dirs []string, tr *stepTrace) (_ *childProcess, report *os.File, _ error) {
	helper, repR, err := spawnHelper(helperPath, req, stdio, namespaces, console, start, dirs, tr)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if report == nil {
			repR.Close()
		}
	}()
	rd := newReportReader(repR, execHelperWait)
	if req.Create != nil && req.Create.InPlace {
		// The helper is the init (spawnHelper started it in the container's namespaces).
		if err := awaitReady(helper, rd, req.Args[0], tr); err != nil {
			return nil, nil, err
		}
		return helper, repR, nil
	}
	first, err := readReport(rd)
	if err != nil && err != io.EOF {
		_ = helper.Kill()
	}
	hst, werr := helper.wait() // it exits right after its report
	switch {
	case err == io.EOF && werr != nil:
		return nil, nil, fmt.Errorf("exec helper exited without a report (%w)", werr)
	case err == io.EOF:
		return nil, nil, fmt.Errorf("exec helper exited without a report (%s)", waitStatusText(hst))
	case err != nil:
		return nil, nil, err
	}
	proc, keepReport, err := awaitForked("exec helper", first, rd, req, tr)
	if err != nil || !keepReport {
		return proc, nil, err
	}
	return proc, repR, nil
}

// awaitForked is the tail of a process that the one-shot helper or an exec server (via)
// forked for req, from the first report on its pipe (the process's pid, or what failed
// before the fork) and the rest of the pipe, rep: the process once it exec'd its program,
// or, for a create (req.Create), once it is ready to be started, when the report pipe
// stays open for the start (keepReport). A process whose exec or create failed is killed
// and reaped.
func awaitForked(via string, first helperReport, rep io.Reader, req *convert.ExecRequest, tr *stepTrace) (proc *childProcess, keepReport bool, err error) {
	if first.kind != reportPid {
		return nil, false, helperError(first, req.Args[0])
	}
	if proc, err = findChild(int(first.value)); err != nil {
		return nil, false, fmt.Errorf("%s: process %d: %w", via, first.value, err)
	}
	tr.mark(via + " forked the process")
	if req.Create != nil {
		if err := awaitReady(proc, rep, req.Args[0], tr); err != nil {
			return nil, false, err
		}
		return proc, true, nil
	}
	if err := awaitExecTraced(rep, req.Args[0], tr); err != nil {
		proc.killAndReap()
		return nil, false, err
	}
	return proc, false, nil
}

// awaitReady waits until a container's init, proc, reports on rep that it is ready to be
// started; the report pipe stays open for the start. An init that failed or reported
// anything else is killed and reaped.
func awaitReady(proc *childProcess, rep io.Reader, argv0 string, tr *stepTrace) error {
	next, err := readReportTraced(rep, tr)
	if err == nil && next.kind == reportReady {
		return nil
	}
	return killUnexpected(proc, next, err, argv0)
}

// stdioOrNull is stdio with /dev/null for what is nil, and the files to close after use.
func stdioOrNull(stdio [3]*os.File) (out [3]*os.File, closers []*os.File, err error) {
	for i, f := range stdio {
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				return out, closers, err
			}
			closers = append(closers, null)
			f = null
		}
		out[i] = f
	}
	return out, closers, nil
}

// execFirstExtraFD is the first descriptor of the helper's (and an exec server's
// process's) beyond stdio, the request (3) and the report (4).
const execFirstExtraFD = 5

// spawnHelper starts the helper (runExecHelper's arguments; an exec server, req.Serve, in
// the agent's cgroup) and sends it req; it returns the helper and the read end of its
// report pipe.
func spawnHelper(helperPath string, req *convert.ExecRequest, stdio [3]*os.File, namespaces []nsFile, console, start *os.File, dirs []string, tr *stepTrace) (_ *childProcess, report *os.File, _ error) {
	std, closers, err := stdioOrNull(stdio)
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()
	if err != nil {
		return nil, nil, err
	}
	files := append(make([]*os.File, 0, 8+len(namespaces)), std[:]...)
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("exec helper: request pipe: %w", err)
	}
	closers = append(closers, reqR, reqW)
	repR, repW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("exec helper: report pipe: %w", err)
	}
	closers = append(closers, repW)
	defer func() {
		if report == nil {
			repR.Close()
		}
	}()
	files = append(files, reqR, repW) // fds 3 and 4, as the helper expects
	req.Namespaces = req.Namespaces[:0]
	for _, ns := range namespaces {
		req.Namespaces = append(req.Namespaces, convert.ExecNamespace{NSType: ns.nstype, FD: len(files)})
		files = append(files, ns.f)
	}
	req.ConsoleFD = -1
	if console != nil {
		req.ConsoleFD = len(files)
		files = append(files, console)
	}
	var cloneFlags uintptr
	if req.Create != nil {
		req.Create.StartFD = len(files)
		files = append(files, start)
		// The helper started as the container's init, in the namespaces it creates, unless it
		// joins any (a pid namespace cannot be joined by the process itself, and the helper
		// joins the others before the new ones are made) or creates a user namespace (the
		// rlimits are set before it, with the guest's root's rights).
		req.Create.InPlace = len(namespaces) == 0 && req.Create.CloneFlags&unix.CLONE_NEWUSER == 0
		if req.Create.InPlace {
			cloneFlags = uintptr(req.Create.CloneFlags &^ unix.CLONE_NEWCGROUP)
		}
	}
	if req.Serve != nil {
		req.ServeFD = len(files)
		files = append(files, req.Serve)
	}
	data, err := req.Encode()
	if err != nil {
		return nil, nil, err
	}

	var helper *childProcess
	if req.Serve != nil {
		helper, err = startChild(helperPath, []string{"runv-exec"}, files, &syscall.SysProcAttr{})
	} else {
		helper, err = startInCgroup(helperPath, files, dirs, cloneFlags)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("exec helper: start: %w", err)
	}
	tr.mark("helper started")
	// Only the helper keeps its ends.
	reqR.Close()
	repW.Close()
	if _, err := reqW.Write(data); err != nil {
		helper.killAndReap()
		return nil, nil, fmt.Errorf("exec helper: send the request: %w", err)
	}
	return helper, repR, nil
}

// readReportTraced reads the next report that is not a step (reportTrace), marking the
// steps it passes in tr.
func readReportTraced(r io.Reader, tr *stepTrace) (helperReport, error) {
	next, err := readReport(r)
	for err == nil && next.kind == reportTrace {
		tr.mark(next.text)
		next, err = readReport(r)
	}
	return next, err
}

// awaitExec reads the report pipe of a process that is about to exec its program: EOF
// (the pipe closes on exec) is success, else the helper's report of what failed.
func awaitExec(report io.Reader, argv0 string) error {
	return awaitExecTraced(report, argv0, nil)
}

// awaitExecTraced is awaitExec that marks in tr the steps the process reports
// (traceSteps).
func awaitExecTraced(report io.Reader, argv0 string, tr *stepTrace) error {
	next, err := readReportTraced(report, tr)
	switch {
	case err == io.EOF:
		return nil
	case err == nil && next.kind == reportError:
		return helperError(next, argv0)
	case err == nil:
		return fmt.Errorf("exec helper: unexpected report %q", rune(next.kind))
	}
	return err
}

// killUnexpected ends a process whose helper reported an error (or nothing, or something
// unexpected) and returns that as the error.
func killUnexpected(proc *childProcess, rep helperReport, err error, argv0 string) error {
	if err == nil && rep.kind != reportError {
		err = fmt.Errorf("exec helper: unexpected report %q", rune(rep.kind))
	}
	proc.killAndReap()
	switch {
	case err == io.EOF:
		return errors.New("exec helper: the process exited without a report")
	case err != nil:
		return err
	}
	return helperError(rep, argv0)
}

// startInCgroup starts the helper directly in the first of dirs that takes it
// (CLONE_INTO_CGROUP), as libcontainer starts `runc init` for an exec, in new namespaces of
// the types cloneFlags names.
func startInCgroup(helperPath string, files []*os.File, dirs []string, cloneFlags uintptr) (*childProcess, error) {
	var errs []error
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		cg, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("open cgroup %s: %w", dir, err))
			continue
		}
		p, err := startChild(helperPath, []string{"runv-exec"}, files,
			&syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg, Cloneflags: cloneFlags})
		unix.Close(cg)
		if err == nil {
			return p, nil
		}
		errs = append(errs, fmt.Errorf("into cgroup %s: %w", dir, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("the container has no cgroup")
	}
	return nil, errors.Join(errs...)
}
