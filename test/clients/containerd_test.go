//go:build integration

package clients

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// containerd is the suite's private containerd (Debian's 1.6): root, state and sockets
// under the work directory, CRI disabled. docker uses it too.
type containerd struct {
	*service
	dir     string
	address string
	// ns is the namespace of the ctr tests; runv's root for them is runcRoot/ns.
	ns string
}

// runcRoot is where containerd's runc shim keeps runtime state (--root NS appended); it
// does not follow containerd's state directory.
const runcRoot = "/run/containerd/runc"

var (
	ctrd        *containerd
	ctrdOnce    sync.Once
	ctrdSkipWhy string
)

const containerdConfig = `# A private, throw-away containerd for runv's client tests.
version = 2
root = "%[1]s/root"
state = "%[1]s/state"
# CRI is not needed for ctr and docker; disabled, it needs no CNI.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "%[1]s/containerd.sock"

[ttrpc]
  address = "%[1]s/containerd.sock.ttrpc"

[debug]
  address = "%[1]s/debug.sock"
  level = "debug"

[metrics]
  address = ""
`

// needContainerd starts containerd once, or skips the test with the reason it cannot run.
func needContainerd(t *testing.T) *containerd {
	t.Helper()
	ctrdOnce.Do(func() {
		for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
			if _, err := lookPath(b); err != nil {
				ctrdSkipWhy = fmt.Sprintf("%s is not installed (make client-deps: apt-get install containerd)", b)
				return
			}
		}
		dir := filepath.Join(tmp, "c")
		os.MkdirAll(dir, 0o755)
		conf := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(containerdConfig, dir)), 0o644); err != nil {
			ctrdSkipWhy = err.Error()
			return
		}
		// containerd finds runv's shim (io.containerd.runv.v2) on its PATH, and the shim
		// keeps its pods under a root of the suite's.
		env := []string{"PATH=" + filepath.Dir(shimBinary) + ":" + os.Getenv("PATH"), "RUNV_ROOT=" + shimRoot()}
		s, err := startService("containerd", filepath.Join(dir, "containerd.log"), env, "containerd", "--config", conf)
		if err != nil {
			ctrdSkipWhy = fmt.Sprintf("cannot start containerd: %v", err)
			return
		}
		c := &containerd{service: s, dir: dir, address: filepath.Join(dir, "containerd.sock"), ns: fmt.Sprintf("runv-clients-%d", os.Getpid())}
		ctrd = c
		if err := s.waitReady(30*time.Second, func() error {
			_, err := c.ctrQuiet("version")
			return err
		}); err != nil {
			ctrdSkipWhy = fmt.Sprintf("containerd does not come up on this machine: %v", err)
			return
		}
		if out, err := c.ctrQuiet("images", "import", img.Path); err != nil {
			ctrdSkipWhy = fmt.Sprintf("containerd cannot import the test image %s: %v\n%s", img.Path, err, out)
			return
		}
	})
	if ctrdSkipWhy != "" {
		t.Skip(ctrdSkipWhy)
	}
	return ctrd
}

func (c *containerd) ctrArgs(args ...string) []string {
	return append([]string{"-a", c.address, "-n", c.ns}, args...)
}

// ctrQuiet runs ctr outside any test (setup and teardown).
func (c *containerd) ctrQuiet(args ...string) (string, error) {
	return quiet(30*time.Second, "ctr", c.ctrArgs(args...)...)
}

// The runtimeEnv of the ctr tests.
func (c *containerd) roots() []string    { return []string{filepath.Join(runcRoot, c.ns)} }
func (c *containerd) logFiles() []string { return []string{c.log} }
func (c *containerd) extraLogs() string {
	// The runc shim's log of runv calls (--log ... --log-format json) of live tasks.
	return shimLogs(filepath.Join(c.dir, "state", "io.containerd.runtime.v2.task", c.ns))
}

// shimLogs shows the runtime logs containerd's runc shim keeps in each task's bundle.
func shimLogs(nsDir string) string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(nsDir, "*", "log.json"))
	for _, l := range logs {
		fmt.Fprintf(&b, "--- runc shim's runtime log %s:%s\n", l, indent(tail(readAll(l), 40)))
	}
	return b.String()
}

// stop removes what the ctr tests left in containerd, stops it, and checks that its shims
// are gone.
func (c *containerd) stop() (problems []string) {
	if c.exited() {
		return []string{fmt.Sprintf("containerd exited during the suite (%v); see %s", c.cmd.ProcessState, c.log)}
	}
	if tasks, err := c.ctrQuiet("tasks", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(tasks) {
			problems = append(problems, "containerd task left: "+id)
			c.ctrQuiet("tasks", "kill", "-s", "KILL", id)
			time.Sleep(time.Second)
			c.ctrQuiet("tasks", "delete", "--force", id)
		}
	}
	if ctrs, err := c.ctrQuiet("containers", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(ctrs) {
			problems = append(problems, "containerd container left: "+id)
			c.ctrQuiet("containers", "rm", id)
		}
	}
	problems = append(problems, c.terminate(20*time.Second)...)
	for _, p := range runvProcesses(nil, []string{c.address}) {
		problems = append(problems, fmt.Sprintf("process of our containerd left: %d %s", p.pid, p.cmdline))
		if p.pid > 0 {
			syscallKill(p.pid)
		}
	}
	// ctr's containers' cgroups are /<namespace>/<id>: runv removes each container's at
	// delete, and runc leaves the namespace's parent, as runv does.
	problems = append(problems, removeCgroupParent(c.ns)...)
	// runv's root for our namespace: empty once every container is deleted.
	root := c.roots()[0]
	os.Remove(filepath.Join(root, "@pods"))
	if err := os.Remove(root); err != nil && !os.IsNotExist(err) {
		entries, _ := os.ReadDir(root)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		problems = append(problems, fmt.Sprintf("runv root %s not empty: %v", root, names))
	}
	return problems
}

// ctr runs a ctr command for a test.
func (c *containerd) ctr(t *testing.T, o cmdOpts, args ...string) result {
	t.Helper()
	return runCmd(t, o, "ctr", c.ctrArgs(args...)...)
}

// newCtrTest starts a ctr test and cleans its container up afterwards, by force if needed.
func newCtrTest(t *testing.T) (*containerd, *tc, string) {
	c := needContainerd(t)
	x := newTC(t, c)
	id := newName(t)
	x.track(id)
	t.Cleanup(func() { c.forceRemove(t, id) })
	return c, x, id
}

// forceRemove deletes a ctr container and its task whatever state they are in. A shim stuck
// in a runtime call is killed.
func (c *containerd) forceRemove(t *testing.T, id string) {
	if _, err := c.ctrQuiet("containers", "info", id); err == nil {
		t.Logf("cleanup: removing container %s", id)
		c.ctrQuiet("tasks", "kill", "-s", "KILL", id)
		for i := 0; i < 10; i++ {
			out, err := c.ctrQuiet("tasks", "delete", "--force", id)
			if err == nil || strings.Contains(out, "not found") {
				break
			}
			time.Sleep(time.Second)
		}
		c.ctrQuiet("containers", "rm", id)
	}
	killStuckShims(t, c.address, id)
}

// killStuckShims waits a little for containerd's shims of a removed container to exit, and
// kills those that do not: a shim waiting forever on a runtime call (the pty master of a
// --console-socket that never comes, say).
func killStuckShims(t *testing.T, address, id string) {
	deadline := time.Now().Add(10 * time.Second)
	for len(runvProcesses(nil, []string{id})) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	for _, s := range killShimsOf(address, id) {
		t.Errorf("cleanup: containerd's shim for %s was stuck (a runtime call never returned?); killed it: %s", id, s)
	}
}

// TestContainerdRun: a container's `uname -r` reports the guest kernel, not the host's.
func TestContainerdRun(t *testing.T) {
	c, x, id := newCtrTest(t)
	r := x.must(c.ctr(t, cmdOpts{}, "run", "--rm", "--runc-binary", runtimePath, img.Qualified, id, "uname", "-r"))
	checkGuestRelease(x, r)
}

// TestContainerdExitCode: the container's exit code is ctr's.
func TestContainerdExitCode(t *testing.T) {
	c, x, id := newCtrTest(t)
	r := c.ctr(t, cmdOpts{}, "run", "--rm", "--runc-binary", runtimePath, img.Qualified, id, "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		x.fatal(r, "want exit 3, stdout \"out\\n\", stderr \"err\\n\"")
	}
}

// TestContainerdStdin: ctr's stdin reaches the container (a FIFO from the runc shim).
func TestContainerdStdin(t *testing.T) {
	c, x, id := newCtrTest(t)
	r := x.must(c.ctr(t, cmdOpts{stdin: "hello from the host\n"}, "run", "--rm", "--runc-binary", runtimePath, img.Qualified, id, "sh", "-c", "read l; echo \"got: $l\""))
	if r.stdout != "got: hello from the host\n" {
		x.fatal(r, "stdin did not reach the container")
	}
}

// TestContainerdDetachKillDelete: run -d, the task runs with a pid that is runv's shim,
// kill -s KILL stops it with 137, task delete and container rm clean up.
func TestContainerdDetachKillDelete(t *testing.T) {
	c, x, id := newCtrTest(t)
	pid := c.runSleeper(t, x, id)
	// The pid containerd holds is the host process standing in for the container's init.
	if cmdline := readAll(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(cmdline, "shim\x00") {
		x.errorf(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task pid %d is not runv's shim: %q", pid, cmdline)
	}
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
	c.deleteKilled(t, x, id)
}

// TestContainerdKillTerm: ctr task kill (SIGTERM) reaches the process, which exits with the
// code its trap chose. Its output goes to a file (--log-uri file://: the runc shim hands runv
// a regular file).
func TestContainerdKillTerm(t *testing.T) {
	c, x, id := newCtrTest(t)
	logFile := filepath.Join(t.TempDir(), "out.log")
	x.must(c.ctr(t, cmdOpts{}, "run", "-d", "--log-uri", "file://"+logFile, "--runc-binary", runtimePath, img.Qualified, id,
		"sh", "-c", trapScript))
	if !waitFor(30*time.Second, func() bool { return readAll(logFile) == "ready\n" }) {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "the container did not write \"ready\" to %s within 30s: %q", logFile, readAll(logFile))
	}
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", id))
	if status, _ := c.waitTask(t, x, id, "STOPPED", 30*time.Second); status != "STOPPED" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q 30s after SIGTERM, want STOPPED", id, status)
	}
	r := x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
	if !strings.Contains(r.stderr, "exit code 7") {
		x.errorf(r, "want exit code 7 (the trap's) reported by task delete")
	}
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}

// TestContainerdExec: ctr task exec runs a process in the container's VM.
func TestContainerdExec(t *testing.T) {
	if !hasExec {
		t.Skip(execWhy)
	}
	c, x, id := newCtrTest(t)
	c.runSleeper(t, x, id)
	r := c.ctr(t, cmdOpts{}, "tasks", "exec", "--exec-id", "e1", id, "sh", "-c", "uname -r; exit 5")
	if r.code != 5 || strings.TrimSpace(r.stdout) != guestRelease {
		x.errorf(r, "want the guest kernel %s and exit 5 from the exec", guestRelease)
	}
	ctrTerminal(t, x, c.ctrArgs("tasks", "exec", "-t", "--exec-id", "e2", id, "sh", "-c", ctrTerminalScript)...)
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
	c.waitTask(t, x, id, "STOPPED", 30*time.Second)
	x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}

// TestContainerdPsPauseResume: ctr task ps lists the task's process (runv ps --format json:
// host pids), ctr task pause and resume change its status.
func TestContainerdPsPauseResume(t *testing.T) {
	c, x, id := newCtrTest(t)
	pid := c.runSleeper(t, x, id)
	r := x.must(c.ctr(t, cmdOpts{}, "tasks", "ps", id))
	if !strings.Contains(r.stdout, fmt.Sprint(pid)) {
		x.errorf(r, "want the task's pid %d in ctr task ps", pid)
	}
	c.checkPauseResume(t, x, id)
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
	c.waitTask(t, x, id, "STOPPED", 30*time.Second)
	x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}

// TestContainerdTerminal: ctr run -t gives the container a terminal (runv create
// --console-socket: the runc shim waits for the pty master).
func TestContainerdTerminal(t *testing.T) {
	c, x, id := newCtrTest(t)
	ctrTerminal(t, x, c.ctrArgs("run", "--rm", "-t", "--runc-binary", runtimePath, img.Qualified, id, "sh", "-c", ctrTerminalScript)...)
}

// checkPauseResume pauses a running task and resumes it, checking its status each time.
func (c *containerd) checkPauseResume(t *testing.T, x *tc, id string) {
	t.Helper()
	x.must(c.ctr(t, cmdOpts{}, "tasks", "pause", id))
	if status, _ := c.waitTask(t, x, id, "PAUSED", 10*time.Second); status != "PAUSED" {
		x.errorf(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q after pause, want PAUSED", id, status)
	}
	x.must(c.ctr(t, cmdOpts{}, "tasks", "resume", id))
	if status, _ := c.waitTask(t, x, id, "RUNNING", 10*time.Second); status != "RUNNING" {
		x.errorf(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q after resume, want RUNNING", id, status)
	}
}

// runSleeper starts a detached `sleep 1000` task with the runc shim running runv and waits
// until it runs; it returns the task's pid.
func (c *containerd) runSleeper(t *testing.T, x *tc, id string) int {
	t.Helper()
	x.must(c.ctr(t, cmdOpts{}, "run", "-d", "--runc-binary", runtimePath, img.Qualified, id, "sleep", "1000"))
	status, pid := c.waitTask(t, x, id, "RUNNING", 30*time.Second)
	if status != "RUNNING" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q, want RUNNING", id, status)
	}
	return pid
}

// waitTask polls ctr tasks ls until the task has the wanted status or the timeout passes;
// it returns the last status and pid seen.
func (c *containerd) waitTask(t *testing.T, x *tc, id, want string, timeout time.Duration) (string, int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _ := c.ctrQuiet("tasks", "ls")
		status, pid := "", 0
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == id {
				fmt.Sscan(f[1], &pid)
				status = f[2]
			}
		}
		if status == want || time.Now().After(deadline) {
			return status, pid
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deleteKilled waits for a killed task to stop, deletes it (reporting exit code 137) and
// removes its container.
func (c *containerd) deleteKilled(t *testing.T, x *tc, id string) {
	t.Helper()
	if status, _ := c.waitTask(t, x, id, "STOPPED", 60*time.Second); status != "STOPPED" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q 60s after it was killed, want STOPPED", id, status)
	}
	r := x.must(c.ctr(t, cmdOpts{timeout: 90 * time.Second}, "tasks", "delete", id))
	// ctr 1.6 reports a non-zero exit status as a warning.
	if !strings.Contains(r.stderr, "exit code 137") {
		x.errorf(r, "want exit code 137 (killed) reported by task delete of %s", id)
	}
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}

// TestContainerdExecKilledLikeATimeout: containerd kills an exec'd process by SIGKILLing the
// pid runv gave it (its shim), as the CRI does when ExecSync times out. The process must die
// in the VM and the waiting `ctr task exec` return with 137, as with runc.
func TestContainerdExecKilledLikeATimeout(t *testing.T) {
	if !hasExec {
		t.Skip(execWhy)
	}
	c, x, id := newCtrTest(t)
	c.runSleeper(t, x, id)
	guestPs := func() result {
		return runCmd(t, cmdOpts{timeout: 30 * time.Second}, runtimePath, "--root", c.roots()[0], "ps", id)
	}
	exec := make(chan result, 1)
	go func() {
		exec <- c.ctr(t, cmdOpts{timeout: 90 * time.Second}, "tasks", "exec", "--exec-id", "slow", id, "sleep", "903")
	}()
	if !waitFor(60*time.Second, func() bool { return strings.Contains(guestPs().stdout, "sleep 903") }) {
		x.fatal(guestPs(), "the exec'd sleep 903 never ran in the VM")
	}
	start := time.Now()
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "--exec-id", "slow", "-s", "KILL", id))
	select {
	case r := <-exec:
		if r.code != 137 {
			x.errorf(r, "want the killed exec to exit 137")
		}
	case <-time.After(30 * time.Second):
		x.fatal(guestPs(), "ctr task exec still waits 30s after its process was killed")
	}
	if !waitFor(10*time.Second, func() bool { return !strings.Contains(guestPs().stdout, "sleep 903") }) {
		x.fatal(guestPs(), "sleep 903 still runs in the VM 10s after containerd killed its exec")
	}
	t.Logf("exec killed: ctr returned and the process left the VM within %s", time.Since(start).Round(time.Millisecond))
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
	c.waitTask(t, x, id, "STOPPED", 30*time.Second)
	x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}
