//go:build integration

package clients

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests of runv's own containerd shim (containerd-shim-runv-v2, runtime
// io.containerd.runv.v2), driven by ctr through the suite's containerd, which finds the shim
// on its PATH.

const shimRuntime = "io.containerd.runv.v2"

// shimRoot is runv's state root for the shim's pods (RUNV_ROOT of the suite's containerd).
func shimRoot() string { return filepath.Join(tmp, "sr") }

// shimEnv is the shim's footprint for the leak checks: its pods under shimRoot, its shim
// processes (named by container id) and their VMs.
type shimEnv struct{ c *containerd }

func (e shimEnv) roots() []string    { return []string{shimRoot()} }
func (e shimEnv) logFiles() []string { return []string{e.c.log} }
func (e shimEnv) extraLogs() string  { return "" }

// newShimTest starts a test of the shim and removes its containers afterwards.
func newShimTest(t *testing.T, ids ...string) (*containerd, *tc) {
	if shimWhy != "" {
		t.Skip(shimWhy)
	}
	c := needContainerd(t)
	x := newTC(t, shimEnv{c})
	for _, id := range ids {
		x.track(id)
		t.Cleanup(func() { c.forceRemove(t, id) })
	}
	return c, x
}

// shimProcesses lists the live containerd-shim-runv-v2 processes of our containerd.
func shimProcesses(c *containerd) []proc {
	var out []proc
	for _, p := range runvProcesses(nil, []string{c.address}) {
		if strings.Contains(p.cmdline, "containerd-shim-runv-v2") {
			out = append(out, p)
		}
	}
	return out
}

// vmsUnder lists the QEMU processes of the shim's pods.
func vmsUnder(root string) []proc {
	var out []proc
	for _, p := range runvProcesses([]string{root}, nil) {
		if strings.Contains(p.cmdline, "qemu-system") {
			out = append(out, p)
		}
	}
	return out
}

// TestShimRun: ctr run --rm with runv's shim prints the guest kernel, and the shim and its
// VM are gone when ctr returns.
func TestShimRun(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	r := x.must(c.ctr(t, cmdOpts{}, "run", "--rm", "--runtime", shimRuntime, img.Qualified, id, "uname", "-r"))
	checkGuestRelease(x, r)
	if left := append(shimProcesses(c), vmsUnder(shimRoot())...); len(left) > 0 {
		x.errorf(r, "processes left when ctr run --rm returned: %v", left)
	}
}

// TestShimExitCodeAndStdio: the exit code, stdout, stderr and stdin (FIFOs) pass through.
func TestShimExitCodeAndStdio(t *testing.T) {
	id, id2 := newName(t), newName(t)
	c, x := newShimTest(t, id, id2)
	r := c.ctr(t, cmdOpts{}, "run", "--rm", "--runtime", shimRuntime, img.Qualified, id, "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		x.fatal(r, "want exit 3, stdout \"out\\n\", stderr \"err\\n\"")
	}
	r = x.must(c.ctr(t, cmdOpts{stdin: "hello from the host\n"}, "run", "--rm", "--runtime", shimRuntime, img.Qualified, id2, "sh", "-c", "read l; echo \"got: $l\""))
	if r.stdout != "got: hello from the host\n" {
		x.fatal(r, "stdin did not reach the container")
	}
}

// TestShimTaskAPI: a detached container through the task API: exec (exit code, terminal),
// metrics read in the guest, ps, pause and resume, kill and delete with 137. The pod is one
// shim process and one VM.
func TestShimTaskAPI(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	x.must(c.ctr(t, cmdOpts{}, "run", "-d", "--runtime", shimRuntime, img.Qualified, id, "sleep", "1000"))
	if status, _ := c.waitTask(t, x, id, "RUNNING", 60*time.Second); status != "RUNNING" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q, want RUNNING", id, status)
	}
	if shims, vms := shimProcesses(c), vmsUnder(shimRoot()); len(shims) != 1 || len(vms) != 1 {
		x.errorf(result{}, "want one shim and one VM for the container, have shims %v, VMs %v", shims, vms)
	}
	r := c.ctr(t, cmdOpts{}, "tasks", "exec", "--exec-id", "e1", id, "sh", "-c", "uname -r; exit 5")
	if r.code != 5 || strings.TrimSpace(r.stdout) != guestRelease {
		x.errorf(r, "want the guest kernel %s and exit 5 from the exec", guestRelease)
	}
	ctrTerminal(t, x, c.ctrArgs("tasks", "exec", "-t", "--exec-id", "e2", id, "sh", "-c", ctrTerminalScript)...)

	// Metrics are the container's cgroup in the guest: a sleeping busybox uses some memory
	// and has one process.
	r = x.must(c.ctr(t, cmdOpts{}, "tasks", "metrics", id))
	if v := metric(r.stdout, "memory.usage"); v <= 0 {
		x.errorf(r, "want memory.usage > 0 in ctr task metrics, got %d", v)
	}
	if v := metric(r.stdout, "pids.current"); v != 1 {
		x.errorf(r, "want pids.current 1 (sleep) in ctr task metrics, got %d", v)
	}
	r = x.must(c.ctr(t, cmdOpts{}, "tasks", "ps", id))
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 {
		x.errorf(r, "want one process (sleep) in ctr task ps")
	}

	c.checkPauseResume(t, x, id)
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
	if status, _ := c.waitTask(t, x, id, "STOPPED", 30*time.Second); status != "STOPPED" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q 30s after kill -s KILL, want STOPPED", id, status)
	}
	// As runc: killing every process of a stopped container succeeds.
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "--all", "-s", "KILL", id))
	r = x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
	if !strings.Contains(r.stderr, "exit code 137") {
		x.errorf(r, "want exit code 137 (SIGKILL) reported by task delete")
	}
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}

// metric reads one value of ctr task metrics' table (-1 when absent).
func metric(table, name string) int64 {
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			var v int64
			if _, err := fmt.Sscan(f[1], &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// TestShimTerminal: ctr run -t gives the container a terminal.
func TestShimTerminal(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	ctrTerminal(t, x, c.ctrArgs("run", "--rm", "-t", "--runtime", shimRuntime, img.Qualified, id, "sh", "-c", ctrTerminalScript)...)
}

// TestShimLogURIs: --log-uri file:// and binary:// (a logging program reading descriptors 3
// and 4, as containerd's runc shim starts it) receive the container's output.
func TestShimLogURIs(t *testing.T) {
	id, id2 := newName(t), newName(t)
	c, x := newShimTest(t, id, id2)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "file.log")
	x.must(c.ctr(t, cmdOpts{}, "run", "--rm", "--log-uri", "file://"+logFile, "--runtime", shimRuntime, img.Qualified, id,
		"sh", "-c", "echo to-file; echo err-to-file >&2"))
	if got := readAll(logFile); !strings.Contains(got, "to-file\n") || !strings.Contains(got, "err-to-file\n") {
		x.errorf(result{}, "file:// log %s holds %q, want both streams", logFile, got)
	}
	logger := filepath.Join(dir, "logger.sh")
	script := fmt.Sprintf("#!/bin/sh\nexec 5>&-\ncat <&3 >%[1]s/out.log &\ncat <&4 >%[1]s/err.log\nwait\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" >%[1]s/who\n", dir)
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	x.must(c.ctr(t, cmdOpts{}, "run", "--rm", "--log-uri", "binary://"+logger, "--runtime", shimRuntime, img.Qualified, id2,
		"sh", "-c", "echo to-binary; echo err-to-binary >&2"))
	if !waitFor(15*time.Second, func() bool { return readAll(filepath.Join(dir, "who")) != "" }) {
		x.errorf(result{}, "the logging program did not finish after the container exited")
	}
	if out, errs := readAll(filepath.Join(dir, "out.log")), readAll(filepath.Join(dir, "err.log")); out != "to-binary\n" || errs != "err-to-binary\n" {
		x.errorf(result{}, "binary:// logger got stdout %q, stderr %q", out, errs)
	}
	if who := strings.TrimSpace(readAll(filepath.Join(dir, "who"))); who != c.ns+"/"+id2 {
		x.errorf(result{}, "logging program saw CONTAINER_NAMESPACE/CONTAINER_ID %q, want %s/%s", who, c.ns, id2)
	}
}

// runShimPod runs a pod of two containers as the CRI makes them (sandbox sb and member),
// sleeping, and waits until both run.
func runShimPod(t *testing.T, c *containerd, x *tc, sb, member string) {
	t.Helper()
	for _, ctr := range []struct{ id, kind string }{{sb, "sandbox"}, {member, "container"}} {
		x.must(c.ctr(t, cmdOpts{}, "run", "-d", "--runtime", shimRuntime,
			"--annotation", "io.kubernetes.cri.container-type="+ctr.kind, "--annotation", "io.kubernetes.cri.sandbox-id="+sb,
			img.Qualified, ctr.id, "sleep", "1000"))
	}
	for _, id := range []string{sb, member} {
		if status, _ := c.waitTask(t, x, id, "RUNNING", 60*time.Second); status != "RUNNING" {
			x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q, want RUNNING", id, status)
		}
	}
}

// TestShimPod: containers naming a CRI sandbox (or a shim group) join its shim and VM: two
// containers are one shim process and one VM, the member shares the sandbox's network
// namespace in the guest, and the VM goes with the last container.
func TestShimPod(t *testing.T) {
	sb, member := newName(t), newName(t)
	c, x := newShimTest(t, member, sb)
	runShimPod(t, c, x, sb, member)
	if shims, vms := shimProcesses(c), vmsUnder(shimRoot()); len(shims) != 1 || len(vms) != 1 {
		x.errorf(result{}, "want one shim and one VM for the two containers of the pod, have shims %v, VMs %v", shims, vms)
	}
	netns := func(id string) string {
		return strings.TrimSpace(x.must(c.ctr(t, cmdOpts{}, "tasks", "exec", "--exec-id", "ns", id, "readlink", "/proc/self/ns/net")).stdout)
	}
	if a, b := netns(sb), netns(member); a == "" || a != b {
		x.errorf(result{}, "the member's network namespace %q is not the sandbox's %q", b, a)
	}
	// The member goes first, as the CRI removes them; the VM stays for the sandbox.
	for i, id := range []string{member, sb} {
		x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
		c.waitTask(t, x, id, "STOPPED", 30*time.Second)
		x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
		x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
		if i == 0 && len(vmsUnder(shimRoot())) != 1 {
			x.errorf(result{}, "the pod's VM went with its first deleted container")
		}
	}
}

// TestShimOOM: a container killed by the OOM killer in the guest ends with 137 and containerd
// gets the TaskOOM event (what the CRI turns into reason OOMKilled), before the exit.
func TestShimOOM(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	events := c.recordEvents(t)
	r := c.ctr(t, cmdOpts{}, "run", "--rm", "--runtime", shimRuntime, "--memory-limit", fmt.Sprint(32<<20), img.Qualified, id,
		"sh", "-c", memoryHog)
	if r.code != 137 {
		x.fatal(r, "want exit 137 (killed by the OOM killer)")
	}
	if !waitFor(10*time.Second, func() bool { return strings.Contains(readAll(events), "/tasks/delete") }) {
		x.errorf(r, "no /tasks/delete event in ctr events: %s", readAll(events))
	}
	log := readAll(events)
	oom, exit := strings.Index(log, "/tasks/oom {\"container_id\":\""+id+"\""), strings.Index(log, "/tasks/exit")
	if oom < 0 || exit < 0 || oom > exit {
		x.errorf(r, "want /tasks/oom for %s before /tasks/exit in ctr events:%s", id, indent(log))
	}
}

// TestShimRefusesHostNetwork: a VM cannot share the host's network namespace: ctr run
// --net-host is refused with a message saying so, and nothing is left.
func TestShimRefusesHostNetwork(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	r := c.ctr(t, cmdOpts{}, "run", "--rm", "--net-host", "--runtime", shimRuntime, img.Qualified, id, "true")
	if r.code == 0 || !strings.Contains(r.stderr, "host's network") {
		x.errorf(r, "want ctr run --net-host refused, naming the host's network namespace")
	}
	c.ctrQuiet("containers", "rm", id)
}

// TestShimKilled: the fault matrix's row for runv's containerd shim, which is the pod's
// supervisor: SIGKILLed while a container runs and an exec waits, the clients waiting on it
// (ctr run, ctr task exec) return instead of hanging, the pod's VM goes with it, containerd
// cleans the task up (it runs the shim's delete), and nothing of the pod is left (the
// suite's leak check: processes, mounts, state under the shim's root).
func TestShimKilled(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	// ctr leaves its FIFOs' directory behind when its task's shim dies under it: theirs are
	// in the test's own directory.
	fifos := t.TempDir()
	run := make(chan result, 1)
	go func() {
		run <- c.ctr(t, cmdOpts{timeout: 3 * time.Minute}, "run", "--fifo-dir", fifos, "--runtime", shimRuntime, img.Qualified, id, "sleep", "1000")
	}()
	if status, _ := c.waitTask(t, x, id, "RUNNING", 60*time.Second); status != "RUNNING" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q, want RUNNING", id, status)
	}
	exec := make(chan result, 1)
	go func() {
		exec <- c.ctr(t, cmdOpts{timeout: 3 * time.Minute}, "tasks", "exec", "--fifo-dir", fifos, "--exec-id", "e1", id, "sleep", "999")
	}()
	if !waitFor(60*time.Second, func() bool {
		out, _ := c.ctrQuiet("tasks", "ps", id)
		return len(strings.Split(strings.TrimSpace(out), "\n")) == 3 // header, sleep 1000, sleep 999
	}) {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ps", id), "the exec never ran")
	}
	shims, vms := shimProcesses(c), vmsUnder(shimRoot())
	if len(shims) != 1 || len(vms) != 1 {
		x.fatal(result{}, "want one shim and one VM, have shims %v, VMs %v", shims, vms)
	}
	start := time.Now()
	syscallKill(shims[0].pid)
	for what, ch := range map[string]chan result{"ctr run": run, "ctr task exec": exec} {
		select {
		case r := <-ch:
			if r.code == 0 {
				x.errorf(r, "%s succeeded after its shim was killed", what)
			}
			t.Logf("%s returned %s after the shim was killed: exit %d", what, time.Since(start).Round(time.Millisecond), r.code)
		case <-time.After(90 * time.Second):
			x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "%s still waits 90s after its shim was killed", what)
		}
	}
	if !waitFor(30*time.Second, func() bool { return isZombie(vms[0].pid) || !exists(vms[0].pid) }) {
		x.errorf(result{}, "the pod's VM (pid %d) outlived its shim by 30s", vms[0].pid)
	}
	// The task is gone or stopped; either way it deletes and the container goes.
	if out, err := c.ctrQuiet("tasks", "ls"); err == nil && strings.Contains(out, id) {
		c.ctr(t, cmdOpts{}, "tasks", "delete", "--force", id)
	}
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}

func exists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// TestShimUnresponsiveGuest: a guest that stops answering (here its QEMU is stopped with
// SIGSTOP, as a hung or hostile guest would look) must not leave containerd's kill and
// delete hanging. ctr task kill -s KILL returns within a bound (the shim waits
// guestKillTimeout for the guest, then ends the pod's VM), every container of the pod is
// then stopped with 137, the tasks delete, and the shim and the VM are gone.
func TestShimUnresponsiveGuest(t *testing.T) {
	sb, member := newName(t), newName(t)
	c, x := newShimTest(t, member, sb)
	runShimPod(t, c, x, sb, member)
	shims, vms := shimProcesses(c), vmsUnder(shimRoot())
	if len(shims) != 1 || len(vms) != 1 {
		x.fatal(result{}, "want one shim and one VM, have shims %v, VMs %v", shims, vms)
	}
	if err := syscall.Kill(vms[0].pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(vms[0].pid, syscall.SIGKILL) })

	// guestKillTimeout (20 s) and the VM's end; before, ctr waited on the guest for good.
	r := c.ctr(t, cmdOpts{timeout: 90 * time.Second}, "tasks", "kill", "-s", "KILL", member)
	if r.code != 0 {
		x.fatal(r, "ctr task kill -s KILL of a container whose guest stopped answering")
	}
	t.Logf("ctr task kill returned after %s", r.took.Round(time.Millisecond))
	for _, id := range []string{member, sb} {
		c.deleteKilled(t, x, id)
	}
	if !waitFor(30*time.Second, func() bool { return len(shimProcesses(c)) == 0 && !exists(vms[0].pid) }) {
		x.errorf(result{}, "30s after the pod's last container was deleted: shims %v, VM %d alive %v", shimProcesses(c), vms[0].pid, exists(vms[0].pid))
	}
}

// TestShimTaskPid: the pid containerd has for a task of runv's shim (ctr task ls, the task
// and exec events) is the pod's VM's, the host process that runs the container, not the
// shim's. Killing it ends the container as killing a runc container's pid does: the task
// stops with 137, deletes, and the shim goes with the pod.
func TestShimTaskPid(t *testing.T) {
	id := newName(t)
	c, x := newShimTest(t, id)
	events := c.recordEvents(t)
	x.must(c.ctr(t, cmdOpts{}, "run", "-d", "--runtime", shimRuntime, img.Qualified, id, "sleep", "1000"))
	status, pid := c.waitTask(t, x, id, "RUNNING", 60*time.Second)
	if status != "RUNNING" {
		x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q, want RUNNING", id, status)
	}
	vms := vmsUnder(shimRoot())
	if len(vms) != 1 {
		x.fatal(result{}, "want the pod's one VM, have %v", vms)
	}
	if pid != vms[0].pid {
		x.errorf(c.ctr(t, cmdOpts{}, "tasks", "ls"), "ctr task ls gives pid %d for %s, want its VM's %d (shims: %v)", pid, id, vms[0].pid, shimProcesses(c))
	}
	x.must(c.ctr(t, cmdOpts{}, "tasks", "exec", "--exec-id", "e1", id, "true"))
	want := fmt.Sprintf(`"pid":%d`, vms[0].pid)
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/exec-started"} {
		if !waitFor(10*time.Second, func() bool { return eventHas(readAll(events), topic, id, want) }) {
			x.errorf(result{}, "no %s event for %s with %s in ctr events:%s", topic, id, want, indent(readAll(events)))
		}
	}

	if err := syscall.Kill(vms[0].pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.deleteKilled(t, x, id)
	if !waitFor(30*time.Second, func() bool { return len(shimProcesses(c)) == 0 }) {
		x.errorf(result{}, "the pod's shim outlived its last container by 30s: %v", shimProcesses(c))
	}
}

// recordEvents runs ctr events for the rest of the test; it returns the file that receives
// them.
func (c *containerd) recordEvents(t *testing.T) string {
	events := filepath.Join(t.TempDir(), "events")
	ev, err := startService("ctr events", events, nil, append([]string{"ctr"}, c.ctrArgs("events")...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.terminate(5 * time.Second) })
	return events
}

// eventHas reports whether ctr events printed an event of topic for container id that
// holds field.
func eventHas(log, topic, id, field string) bool {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, " "+topic+" ") && strings.Contains(l, `"container_id":"`+id+`"`) && strings.Contains(l, field) {
			return true
		}
	}
	return false
}
