//go:build integration

// Package clients drives runv through the real clients users run it with, Debian's packages:
// containerd (ctr, the runc shim v2 with BinaryName=runv), podman (--runtime) and docker
// (dockerd --add-runtime). Each client gets a private instance under a temporary directory:
// its own containerd, its own dockerd, podman storage of its own.
//
// The clients exec the installed runv (RUNV_CLIENT_RUNTIME, default /usr/local/bin/runv) with
// no runv flags of ours, so runv must find its kernel and initrd by itself: `make client-test`
// runs `make install` first. Set RUNV_CLIENT_TRACE=1 to record every runv call the clients
// make (the clients then exec a wrapper that logs its arguments and execs runv); the record
// is printed when a test fails.
//
// Every test prints the exact client command and the runtime's logs when it fails, and
// checks afterwards that no qemu, pod daemon (`runv containerd`) or `runv shim` process and
// no mount under runv's root is left behind.
package clients

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/test/image"
)

var (
	// runtimePath is what the clients are told to run: runv itself, or the tracing wrapper.
	runtimePath string
	// runvBinary is the runv under test.
	runvBinary string
	// traceLog records the runv calls when RUNV_CLIENT_TRACE=1.
	traceLog string
	// guestRelease is the release of runv's guest kernel (uname -r in a container).
	guestRelease string
	hostRelease  string
	// tmp holds everything the suite makes.
	tmp string
	// workDir is the working directory of every client command: clients write files
	// into theirs (conmon, started by podman in podman's own, writes "oom" there when the
	// container's cgroup reports an OOM kill), and they must not land in the source tree.
	workDir string
	// sourceTree is the package's directory and what it held when the suite began.
	sourceTree       string
	sourceTreeBefore map[string]bool
	img              *image.Built
	// shimBinary is runv's containerd shim (containerd-shim-runv-v2); shimWhy says why
	// the shim tests cannot run ("" when they can).
	shimBinary, shimWhy string
	// hasExec reports whether this runv has an exec command.
	hasExec bool
	execWhy string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "client tests:", err)
		return 1
	}
	// Services are stopped whatever happens: at the end, or on SIGINT/SIGTERM (they also
	// get SIGTERM if this process dies: Pdeathsig).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "client tests: %v: stopping services\n", s)
		teardown()
		os.Exit(2)
	}()
	code := m.Run()
	signal.Stop(sigs)
	if problems := teardown(); len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "client tests: after the suite:\n  %s\n", strings.Join(problems, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	return code
}

func setup() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the client tests need root: they start containerd and dockerd, run rootful podman, and runv boots VMs")
	}
	runvBinary = os.Getenv("RUNV_CLIENT_RUNTIME")
	if runvBinary == "" {
		runvBinary = "/usr/local/bin/runv"
	}
	if _, err := os.Stat(runvBinary); err != nil {
		return fmt.Errorf("runv not found at %s (install it with 'make install', or set RUNV_CLIENT_RUNTIME): %v", runvBinary, err)
	}
	// The clients run runv without --kernel/--initrd: it must find them where it looks.
	kernel := os.Getenv("RUNV_KERNEL")
	if kernel == "" {
		kernel = "/var/lib/runv/vmlinux"
	}
	for _, f := range []string{kernel, envOr("RUNV_INITRD", "/var/lib/runv/initrd.img")} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("runv's guest files are not installed: %v (run 'make install')", err)
		}
	}
	rel, err := kernelRelease(kernel)
	if err != nil {
		return err
	}
	guestRelease = rel
	var u unix.Utsname
	unix.Uname(&u)
	hostRelease = unix.ByteSliceToString(u.Release[:])
	if hostRelease == guestRelease {
		return fmt.Errorf("the host runs the guest's kernel release %s: uname -r cannot tell a VM from the host", hostRelease)
	}
	if out, err := exec.Command(runvBinary, "exec", "--help").CombinedOutput(); err != nil {
		execWhy = fmt.Sprintf("%s has no exec command yet ('runv exec --help': %v: %s)", runvBinary, err, strings.TrimSpace(string(out)))
	} else {
		hasExec = true
	}

	// Short paths: runv's sockets live under the clients' runv roots, some of which are here.
	if tmp, err = os.MkdirTemp("", "rvc-"); err != nil {
		return err
	}
	workDir = filepath.Join(tmp, "wd")
	if err := os.Mkdir(workDir, 0o755); err != nil {
		return err
	}
	if sourceTree, err = os.Getwd(); err != nil {
		return err
	}
	sourceTreeBefore = dirEntries(sourceTree)
	runtimePath = runvBinary
	if os.Getenv("RUNV_CLIENT_TRACE") == "1" {
		traceLog = filepath.Join(tmp, "runv-calls.log")
		wrapper := filepath.Join(tmp, "bin", "runv")
		script := fmt.Sprintf("#!/bin/sh\necho \"$(date +%%T.%%N) [$$] runv $*\" >> %s\nexec %s \"$@\"\n", traceLog, runvBinary)
		os.MkdirAll(filepath.Dir(wrapper), 0o755)
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			return err
		}
		runtimePath = wrapper
	}
	shimBinary = envOr("RUNV_CLIENT_SHIM", filepath.Join(filepath.Dir(runvBinary), "containerd-shim-runv-v2"))
	if _, err := os.Stat(shimBinary); err != nil {
		shimWhy = fmt.Sprintf("runv's containerd shim is not installed next to runv (%v): make install, or set RUNV_CLIENT_SHIM", err)
	}
	if img, err = image.Busybox(filepath.Join(tmp, "busybox.tar"), ""); err != nil {
		return fmt.Errorf("build the test image: %w", err)
	}
	fmt.Fprintf(os.Stderr, "client tests: runtime %s, guest kernel %s (host %s), image %s, work dir %s\n",
		runtimePath, guestRelease, hostRelease, img.Name, tmp)
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// kernelRelease reads the release from the banner in an uncompressed vmlinux.
func kernelRelease(vmlinux string) (string, error) {
	b, err := os.ReadFile(vmlinux)
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`Linux version (\S+)`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s: no 'Linux version' banner", vmlinux)
	}
	return string(m[1]), nil
}

var teardownOnce sync.Once

// teardown stops the services (dockerd first: it uses containerd), then removes the work
// directory; it reports what it had to clean up by force.
func teardown() (problems []string) {
	teardownOnce.Do(func() {
		for name := range dirEntries(sourceTree) {
			if !sourceTreeBefore[name] {
				problems = append(problems, fmt.Sprintf("%s appeared in the source tree during the suite: a client wrote it into its working directory (run clients in workDir)", filepath.Join(sourceTree, name)))
			}
		}
		if dockerd != nil {
			problems = append(problems, dockerd.stop()...)
		}
		if ctrd != nil {
			problems = append(problems, ctrd.stop()...)
		}
		if podmanSetUp {
			problems = append(problems, podmanTeardown()...)
		}
		if tmp == "" {
			return
		}
		for _, mp := range mountsUnder(tmp) {
			problems = append(problems, "mount left under the work directory: "+mp)
			unix.Unmount(mp, unix.MNT_DETACH)
		}
		if len(mountsUnder(tmp)) == 0 {
			os.RemoveAll(tmp)
		}
	})
	return problems
}

// dirEntries names what a directory holds.
func dirEntries(dir string) map[string]bool {
	names := map[string]bool{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names
}

// --- commands -------------------------------------------------------------------------

// result is what one client command did.
type result struct {
	cmdline        string
	stdout, stderr string
	code           int
	timedOut       bool
	took           time.Duration
}

func (r result) String() string {
	status := fmt.Sprintf("exit %d", r.code)
	if r.timedOut {
		status = "KILLED after the timeout (it hung)"
	}
	return fmt.Sprintf("command: %s\n%s after %s\nstdout: %q\nstderr: %s", r.cmdline, status,
		r.took.Round(time.Millisecond), r.stdout, indent(r.stderr))
}

// cmdOpts tunes one command.
type cmdOpts struct {
	stdin   string
	env     []string
	timeout time.Duration
}

// runCmd runs a command with its output in files (a client may hand its descriptors to
// processes that outlive it), killing it at the timeout.
func runCmd(t *testing.T, o cmdOpts, name string, args ...string) result {
	t.Helper()
	if o.timeout == 0 {
		o.timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = workDir
	cmd.Env = append(os.Environ(), o.env...)
	out, errf := tempFile(t), tempFile(t)
	cmd.Stdout, cmd.Stderr = out, errf
	if o.stdin != "" {
		cmd.Stdin = strings.NewReader(o.stdin)
	}
	cmd.WaitDelay = 5 * time.Second
	r := result{cmdline: shellQuote(append([]string{name}, args...))}
	t.Logf("$ %s", r.cmdline)
	start := time.Now()
	err := cmd.Run()
	r.took = time.Since(start)
	r.stdout, r.stderr = readAll(out.Name()), readAll(errf.Name())
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.timedOut, r.code = true, -1
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		r.code = -1
		r.stderr += "\n(" + err.Error() + ")"
	}
	return r
}

func tempFile(t *testing.T) *os.File {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readAll(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"$`\\|&;()<>*?[]{}!#~") {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return `""`
	}
	return "\n    " + strings.ReplaceAll(s, "\n", "\n    ")
}

var idSeq atomic.Int64

// newName returns a container name unique in the suite, valid for every client.
func newName(t *testing.T) string {
	n := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(strings.TrimPrefix(t.Name(), "Test"), "-"))
	return fmt.Sprintf("rv-%s-%d-%d", strings.Trim(n, "-"), os.Getpid()%100000, idSeq.Add(1))
}

// --- per-test context: diagnostics and leak checks ---------------------------------------

// runtimeEnv is what a client's use of runv leaves on the host: where to look for it.
type runtimeEnv interface {
	// roots are runv's --root directories for this client (some may not exist yet).
	roots() []string
	// logFiles are service logs worth showing when a test fails.
	logFiles() []string
	// extraLogs returns client-specific diagnostics (runtime logs of live containers).
	extraLogs() string
}

// tc is one test's view of a client.
type tc struct {
	t      *testing.T
	env    runtimeEnv
	before map[int]bool // processes that existed when the test began
	mounts map[string]bool
	pods   map[string]bool
	states map[string]bool
	logPos map[string]int64
	names  []string // containers the test made, for the leak check
}

func newTC(t *testing.T, env runtimeEnv) *tc {
	c := &tc{t: t, env: env, before: map[int]bool{}, mounts: map[string]bool{}, pods: map[string]bool{}, states: map[string]bool{}, logPos: map[string]int64{}}
	for _, p := range runvProcesses(env.roots(), nil) {
		c.before[p.pid] = true
	}
	for _, root := range env.roots() {
		for _, m := range mountsUnder(root) {
			c.mounts[m] = true
		}
		for _, p := range podDirs(root) {
			c.pods[p] = true
		}
		for _, d := range stateDirs(root) {
			c.states[d] = true
		}
	}
	for _, f := range c.logFiles() {
		if fi, err := os.Stat(f); err == nil {
			c.logPos[f] = fi.Size()
		}
	}
	t.Cleanup(c.checkLeaks) // registered first: runs after the test's own cleanups
	return c
}

func (c *tc) logFiles() []string {
	files := c.env.logFiles()
	if traceLog != "" {
		files = append(files, traceLog)
	}
	return files
}

// track records a container name or id for the leak check.
func (c *tc) track(name string) { c.names = append(c.names, name) }

// fatal fails the test with the command, its result and the runtime's logs.
func (c *tc) fatal(r result, format string, args ...any) {
	c.t.Helper()
	c.t.Fatalf("%s\n%s\n%s", fmt.Sprintf(format, args...), r, c.diagnostics())
}

// errorf reports a failed check without stopping the test.
func (c *tc) errorf(r result, format string, args ...any) {
	c.t.Helper()
	c.t.Errorf("%s\n%s\n%s", fmt.Sprintf(format, args...), r, c.diagnostics())
}

// must runs a command that has to succeed.
func (c *tc) must(r result) result {
	c.t.Helper()
	if r.timedOut || r.code != 0 {
		c.fatal(r, "command failed")
	}
	return r
}

// diagnostics gathers the logs written since the test began: the services' logs, the runv
// call record, the logs of runv pods that are still there, and the client's own.
func (c *tc) diagnostics() string {
	var b strings.Builder
	for _, f := range c.logFiles() {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pos := c.logPos[f]; pos <= int64(len(data)) {
			data = data[pos:]
		}
		fmt.Fprintf(&b, "--- %s (since the test began):%s\n", f, indent(tail(string(data), 80)))
	}
	for _, root := range c.env.roots() {
		for _, pod := range podDirs(root) {
			for _, f := range []string{"daemon.log", "vm/console.log"} {
				if data, err := os.ReadFile(filepath.Join(pod, f)); err == nil {
					fmt.Fprintf(&b, "--- runv pod %s:%s\n", filepath.Join(pod, f), indent(tail(string(data), 40)))
				}
			}
		}
	}
	if extra := c.env.extraLogs(); extra != "" {
		b.WriteString(extra)
	}
	if procs := runvProcesses(c.env.roots(), nil); len(procs) > 0 {
		fmt.Fprintf(&b, "--- runv processes now:\n")
		for _, p := range procs {
			fmt.Fprintf(&b, "    %d %s\n", p.pid, p.cmdline)
		}
	}
	if traceLog == "" {
		b.WriteString("(set RUNV_CLIENT_TRACE=1 to record every runv call the client makes)\n")
	}
	return b.String()
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = append([]string{fmt.Sprintf("[... %d earlier lines]", len(l)-lines)}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "\n")
}

// checkLeaks fails the test if runv left processes, mounts, pods or state behind. Pod VMs
// power off after the last delete: give them a moment.
func (c *tc) checkLeaks() {
	var leaks []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		leaks = nil
		for _, p := range runvProcesses(c.env.roots(), c.names) {
			if !c.before[p.pid] {
				leaks = append(leaks, fmt.Sprintf("process %d: %s", p.pid, p.cmdline))
			}
		}
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, root := range c.env.roots() {
		for _, m := range mountsUnder(root) {
			if !c.mounts[m] {
				leaks = append(leaks, "mount "+m)
			}
		}
		for _, p := range podDirs(root) {
			if !c.pods[p] {
				leaks = append(leaks, "pod directory "+p)
			}
		}
		for _, d := range stateDirs(root) {
			if !c.states[d] {
				leaks = append(leaks, "state directory "+d)
			}
		}
	}
	if len(leaks) > 0 {
		c.t.Errorf("left behind after the test:\n  %s\n%s", strings.Join(leaks, "\n  "), c.diagnostics())
		c.reclaim()
	}
}

// reclaim removes what runv left behind so that the next tests start clean: runv delete
// --force for the test's containers, then SIGKILL for the test's pod processes and a lazy
// unmount for its mounts.
func (c *tc) reclaim() {
	for _, root := range c.env.roots() {
		for _, d := range stateDirs(root) {
			if c.states[d] {
				continue
			}
			out, err := quiet(time.Minute, runvBinary, "--root", root, "delete", "--force", filepath.Base(d))
			c.t.Logf("reclaim: runv --root %s delete --force %s: %v %s", root, filepath.Base(d), err, strings.TrimSpace(out))
		}
	}
	for _, p := range runvProcesses(c.env.roots(), c.names) {
		if !c.before[p.pid] {
			c.t.Logf("reclaim: kill %d %s", p.pid, p.cmdline)
			syscallKill(p.pid)
		}
	}
	for _, root := range c.env.roots() {
		for _, m := range mountsUnder(root) {
			if !c.mounts[m] {
				c.t.Logf("reclaim: umount -l %s", m)
				unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	}
}

type proc struct {
	pid     int
	cmdline string
}

// runvProcesses lists live processes of runv's making under the given roots — qemu, pod
// daemons (`runv containerd`), shims and runv commands, all of which name their root — and
// any process naming one of names (containerd's shim, conmon).
func runvProcesses(roots, names []string) []proc {
	var out []proc
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil || len(raw) == 0 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if pid == os.Getpid() || isZombie(pid) {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		cmdline := strings.Join(args, " ")
		base := filepath.Base(args[0])
		match := false
		if base == "runv" || strings.HasPrefix(base, "qemu-system") {
			for _, r := range roots {
				if strings.Contains(cmdline, r+"/") || strings.Contains(cmdline, r+" ") {
					match = true
				}
			}
		}
		for _, n := range names {
			if containsWord(args, n) {
				match = true
			}
		}
		if match {
			out = append(out, proc{pid, cmdline})
		}
	}
	return out
}

func containsWord(args []string, w string) bool {
	for _, a := range args {
		if a == w || strings.HasSuffix(a, "/"+w) || strings.Contains(a, "/"+w+"/") {
			return true
		}
	}
	return false
}

func isZombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X'
}

// mountsUnder lists mount points strictly below dir.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// stateDirs lists runv's container state directories under a root.
func stateDirs(root string) []string {
	entries, _ := os.ReadDir(root)
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), "@") {
			out = append(out, filepath.Join(root, e.Name()))
		}
	}
	return out
}

// podDirs lists runv's pod directories under a root: the CLI's pod daemons' and the
// containerd shim's (@shim/<digest>).
func podDirs(root string) []string {
	dirs, _ := filepath.Glob(filepath.Join(root, "@pods", "*"))
	shim, _ := filepath.Glob(filepath.Join(root, "@shim", "*"))
	return append(dirs, shim...)
}

// killShimsOf SIGKILLs containerd's shims serving the given container id under our
// containerd: the last resort when a runtime call hangs and holds the shim's lock.
func killShimsOf(address, id string) []string {
	var killed []string
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		raw, _ := os.ReadFile(p)
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		if containsArg(args, "-id", id) && containsArg(args, "-address", address) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			unix.Kill(pid, unix.SIGKILL)
			killed = append(killed, strings.Join(args, " "))
		}
	}
	return killed
}

func containsArg(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

// --- services ---------------------------------------------------------------------------

// service is a daemon the suite starts (containerd, dockerd) and always stops.
type service struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startService starts a daemon; env, when set, is added to the suite's environment.
func startService(name, logPath string, env []string, args ...string) (*service, error) {
	if _, err := exec.LookPath(args[0]); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	// Its own process group (a ^C to the test is ours to handle), and gone with us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &service{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); close(s.done) }()
	return s, nil
}

func (s *service) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// waitReady polls ready until it succeeds, the service exits, or the timeout passes.
func (s *service) waitReady(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if s.exited() {
			return fmt.Errorf("%s exited (%v) before it was ready; its log %s:%s", s.name, s.cmd.ProcessState, s.log, indent(tail(readAll(s.log), 30)))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (%v); its log %s:%s", s.name, timeout, err, s.log, indent(tail(readAll(s.log), 30)))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// terminate sends SIGTERM, then SIGKILL after grace.
func (s *service) terminate(grace time.Duration) []string {
	if s.exited() {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return nil
	case <-time.After(grace):
		s.cmd.Process.Kill()
		<-s.done
		return []string{fmt.Sprintf("%s did not stop within %s of SIGTERM: killed", s.name, grace)}
	}
}
