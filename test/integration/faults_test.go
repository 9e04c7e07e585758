//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The fault matrix: each part of a pod — QEMU, the pod daemon, a container's host shim, the
// agent (PID 1 in the guest) and the guest kernel — is killed at each point of a
// container's life: during create, after create, while it runs, during an exec and during
// delete. Whatever the fault hits:
//   - every waiting client (runv create/run/exec/delete, the shims) returns, with 137 or an
//     error, within clientDeadline: nothing hangs;
//   - `runv state` tells the truth: any call made a second after the fault does;
//   - `runv delete` (or --force, for a container still running) cleans up, and nothing is
//     left: processes, mounts, state and pod directories (with their sockets), the host
//     cgroup, and descriptors in a daemon that survives.
// A case's result goes into the table TestFaultMatrix prints (docs/reliability.md).

const (
	// clientDeadline bounds how long a client may take to return after a fault.
	clientDeadline = 60 * time.Second
	// stateDeadline is how soon after a fault `runv state` must tell the truth.
	stateDeadline = time.Second
)

// A guest fault is fired by the pod's sandbox container, which shares the agent's PID
// namespace and can write /proc/sysrq-trigger: it watches for a file in a directory bound
// from the host and runs what the file says. Polled every 50 ms: a fault lands within about
// that of the host asking for it, without an exec's latency. On a loaded host the guest's
// 50 ms sleeps can take far longer, so the script says when it fires, by creating a file in
// the bound directory (over 9p: the host's file exists once the guest's create returns), and
// the host times the fault from that file, not from its request.
const guestTriggerScript = `while [ ! -e /fault/go ]; do sleep 0.05; done; : > /fault/fired; sh /fault/go; sleep 1000`

type faultPoint string

const (
	duringCreate faultPoint = "during create"
	afterCreate  faultPoint = "after create"
	whileRunning faultPoint = "while running"
	duringExec   faultPoint = "during exec"
	duringDelete faultPoint = "during delete"
)

var faultPoints = []faultPoint{duringCreate, afterCreate, whileRunning, duringExec, duringDelete}

// faultComponent is a part of a pod that dies.
type faultComponent struct {
	name string
	// guest: the fault is fired in the guest by the sandbox container running this.
	guest string
	// word finds the component's host process (with the state root) in its command line.
	word string
}

var faultComponents = []faultComponent{
	{name: "qemu", word: "qemu-system"},
	{name: "pod daemon", word: "\x00containerd\x00"},
	{name: "host shim", word: "\x00shim\x00"},
	// PID 1 ignores SIGKILL from its own namespace; Go's handler for SIGABRT does not, and
	// the agent dies (the kernel then panics: init exited).
	{name: "agent", guest: "kill -ABRT 1"},
	{name: "guest kernel", guest: "echo c > /proc/sysrq-trigger"},
}

// faultCase is one cell: a pod in its own state root and what happened to it.
type faultCase struct {
	t         *testing.T
	comp      faultComponent
	point     faultPoint
	root      string
	id        string // the container the case is about
	sandbox   string // guest faults: the pod's first container, which fires them
	triggerIn string // guest faults: the host directory bound at /fault in the pod
	bundle    string
	cgroup    string // cgroupsPath of the container's bundle: must be gone at the end
	faultAt   time.Time
	// net is the pod's network namespace (a veth, as CNI makes it), mirrored onto the VM
	// with taps, qdiscs and filters: after the cleanup it must be as before the pod.
	net       podNet
	netBefore string

	mu    sync.Mutex
	notes []string // what the clients got, for the table
}

func (f *faultCase) note(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notes = append(f.notes, fmt.Sprintf(format, args...))
}

type faultRow struct {
	comp, point string
	ok          bool
	notes       string
}

// TestFaultMatrix runs every cell in parallel (go test's -parallel bounds how many VMs run
// at once), each in a state root of its own so that its leak check is exact.
func TestFaultMatrix(t *testing.T) {
	var (
		mu   sync.Mutex
		rows []faultRow
	)
	t.Cleanup(func() {
		sort.SliceStable(rows, func(i, j int) bool { return rows[i].comp+rows[i].point < rows[j].comp+rows[j].point })
		var b strings.Builder
		b.WriteString("| component | killed | result | what the clients and state saw |\n|---|---|---|---|\n")
		for _, c := range faultComponents {
			for _, p := range faultPoints {
				for _, r := range rows {
					if r.comp == c.name && r.point == string(p) {
						res := "pass"
						if !r.ok {
							res = "**FAIL**"
						}
						fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.comp, r.point, res, r.notes)
					}
				}
			}
		}
		t.Logf("fault matrix:\n%s", b.String())
		if out := os.Getenv("RUNV_FAULT_TABLE"); out != "" {
			os.WriteFile(out, []byte(b.String()), 0o644)
		}
	})
	for _, comp := range faultComponents {
		for _, point := range faultPoints {
			comp, point := comp, point
			t.Run(comp.name+"/"+string(point), func(t *testing.T) {
				t.Parallel()
				f := newFaultCase(t, comp, point)
				t.Cleanup(func() {
					mu.Lock()
					rows = append(rows, faultRow{comp: comp.name, point: string(point), ok: !t.Failed(), notes: strings.Join(f.notes, "; ")})
					mu.Unlock()
				})
				f.run()
			})
		}
	}
}

func newFaultCase(t *testing.T, comp faultComponent, point faultPoint) *faultCase {
	f := &faultCase{t: t, comp: comp, point: point, root: newRoot(t)}
	f.id = newID(t)
	f.cgroup = "/runv-fault-" + f.id
	f.net = newPodNet(t, true)
	f.netBefore = f.net.snapshot(t)
	f.bundle = newBundleWith(t, func(s *specs.Spec) {
		s.Linux.CgroupsPath = f.cgroup
		setNetNS(s, f.net.path())
	}, "sleep", "1000")
	t.Cleanup(func() { f.checkHostCgroup() })
	return f
}

func (f *faultCase) run() {
	t := f.t
	if f.comp.guest != "" {
		f.startTriggerSandbox()
	}
	switch f.point {
	case duringCreate:
		create := f.startRunv("create", "--bundle", f.memberBundle(), f.id)
		f.inject()
		r := f.wait(create, "create")
		if r.code == 0 {
			f.expectState("stopped")
		} else {
			f.expectState("stopped", "gone")
		}
		f.cleanup(true)
	case afterCreate:
		pidFile := filepath.Join(t.TempDir(), "pid")
		f.mustRunv("create", "--pid-file", pidFile, "--bundle", f.memberBundle(), f.id)
		shim := readPid(t, pidFile)
		f.inject()
		f.expectState("stopped")
		f.waitProcessGone(shim, "the init's shim")
		if r := f.runv("start", f.id); r.code == 0 {
			t.Errorf("start after the fault succeeded: %s", r)
		} else {
			f.note("start: exit %d", r.code)
		}
		f.cleanup(false)
	case whileRunning:
		var run *background
		if f.comp.word == "\x00shim\x00" {
			// The shim is the subject: a detached container has one.
			f.mustRunv("run", "-d", "--bundle", f.memberBundle(), f.id)
		} else {
			// A foreground run is a client waiting for its container.
			run = f.startRunv("run", "--bundle", f.memberBundle(), f.id)
		}
		waitStatus(t, f.root, f.id, "running")
		exec := f.startRunv("exec", f.id, "sleep", "999")
		waitGuest(t, f.root, f.id, "sleep 999", true, clientDeadline)
		f.inject()
		if run == nil {
			f.expectState("stopped")
		} else {
			// The foreground run deletes its container once it learnt its end.
			f.expectState("stopped", "gone")
		}
		f.wait(exec, "exec")
		if run != nil {
			f.wait(run, "run")
		}
		f.cleanup(false)
	case duringExec:
		f.mustRunv("run", "-d", "--bundle", f.memberBundle(), f.id)
		waitStatus(t, f.root, f.id, "running")
		daemon, fds := f.daemonFds()
		if f.comp.word == "\x00shim\x00" {
			// The exec's own shim dies as it starts: its process must not run on.
			exec := f.startRunv("exec", "-d", f.id, "sleep", "998")
			f.inject()
			f.wait(exec, "exec -d")
			f.expectState("running")
			took := waitGuest(t, f.root, f.id, "sleep 998", false, standInDeathDeadline)
			f.note("exec'd process not in the VM %s after the fault", took.Round(time.Millisecond))
			f.checkDaemonFds(daemon, fds)
			f.cleanup(true)
			return
		}
		exec := f.startRunv("exec", f.id, "sleep", "998")
		f.inject()
		f.wait(exec, "exec")
		f.expectState("stopped")
		f.cleanup(false)
	case duringDelete:
		f.mustRunv("run", "-d", "--bundle", f.memberBundle(), f.id)
		waitStatus(t, f.root, f.id, "running")
		// The host process is looked up first: a delete is quicker than a scan of /proc.
		pids := f.hostPids()
		del := f.startRunv("delete", "--force", f.id)
		f.injectInto(pids)
		if r := f.wait(del, "delete --force"); r.code == 0 {
			f.expectState("gone")
		} else {
			f.expectState("stopped", "gone")
		}
		f.cleanup(true)
	}
}

// memberBundle is the bundle of the case's container: for a guest fault it joins the
// sandbox's pod.
func (f *faultCase) memberBundle() string {
	if f.sandbox == "" {
		return f.bundle
	}
	return newBundleWith(f.t, func(s *specs.Spec) {
		s.Linux.CgroupsPath = f.cgroup
		setNetNS(s, f.net.path())
		s.Annotations = map[string]string{
			"io.kubernetes.cri.container-type": "container",
			"io.kubernetes.cri.sandbox-id":     f.sandbox,
		}
	}, "sleep", "1000")
}

// startTriggerSandbox starts the pod's first container, which fires the guest fault.
func (f *faultCase) startTriggerSandbox() {
	t := f.t
	f.triggerIn = t.TempDir()
	f.sandbox = newID(t)
	b := newBundleWith(t, func(s *specs.Spec) {
		s.Linux.CgroupsPath = f.cgroup + "-sandbox"
		setNetNS(s, f.net.path())
		// In the agent's PID namespace, with /proc/sysrq-trigger writable.
		var ns []specs.LinuxNamespace
		for _, n := range s.Linux.Namespaces {
			if n.Type != specs.PIDNamespace {
				ns = append(ns, n)
			}
		}
		s.Linux.Namespaces = ns
		var ro []string
		for _, p := range s.Linux.ReadonlyPaths {
			if p != "/proc/sysrq-trigger" {
				ro = append(ro, p)
			}
		}
		s.Linux.ReadonlyPaths = ro
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/fault", Type: "bind", Source: f.triggerIn, Options: []string{"rbind", "rw"}})
		s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "sandbox"}
	}, "sh", "-c", guestTriggerScript)
	f.mustRunv("run", "-d", "--bundle", b, f.sandbox)
	waitStatus(t, f.root, f.sandbox, "running")
}

// inject kills the case's component: a host process as soon as it exists, or the guest
// through the sandbox's trigger.
func (f *faultCase) inject() {
	t := f.t
	if f.comp.guest != "" {
		tmp := filepath.Join(f.triggerIn, ".go")
		if err := os.WriteFile(tmp, []byte(f.comp.guest+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(f.triggerIn, "go")); err != nil {
			t.Fatal(err)
		}
		fired := filepath.Join(f.triggerIn, "fired")
		deadline := time.Now().Add(clientDeadline)
		for {
			if _, err := os.Stat(fired); err == nil {
				f.faultAt = time.Now()
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest did not fire %q within %s (no %s)", f.comp.guest, clientDeadline, fired)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(clientDeadline)
	for {
		if pids := findPids(f.root, f.hostWord()); len(pids) > 0 {
			f.injectInto(pids)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s process appeared for %s within %s", f.comp.name, f.root, clientDeadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hostWord finds the case's host process in its command line.
func (f *faultCase) hostWord() string {
	if f.point == duringExec && f.comp.word == "\x00shim\x00" {
		return "\x00--process\x00" // the exec's shim, not the init's
	}
	return f.comp.word
}

// hostPids returns the pids of the case's host process, which must exist (nil for a guest
// fault).
func (f *faultCase) hostPids() []int {
	if f.comp.guest != "" {
		return nil
	}
	pids := findPids(f.root, f.hostWord())
	if len(pids) == 0 {
		f.t.Fatalf("no %s process for %s", f.comp.name, f.root)
	}
	return pids
}

// injectInto kills pids, or fires the guest fault when there are none.
func (f *faultCase) injectInto(pids []int) {
	if len(pids) == 0 {
		f.inject()
		return
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	f.faultAt = time.Now()
}

// expectState checks that `runv state` of the case's container tells one of want ("gone":
// it does not exist) for every call made stateDeadline after the fault, and notes how soon
// it first did.
func (f *faultCase) expectState(want ...string) {
	t := f.t
	for {
		start := time.Now()
		r := f.runv("state", f.id)
		got := "gone"
		if r.code == 0 {
			var st ociState
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
				t.Fatalf("state is not JSON: %v: %s", err, r)
			}
			got = st.Status
		}
		for _, w := range want {
			if got == w {
				f.note("state %s when asked %s after the fault", got, start.Sub(f.faultAt).Round(time.Millisecond))
				return
			}
		}
		if start.Sub(f.faultAt) > stateDeadline {
			t.Errorf("state %q at %s after the fault, want %v", got, start.Sub(f.faultAt).Round(time.Millisecond), want)
			f.note("state %s at %s", got, start.Sub(f.faultAt).Round(time.Millisecond))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait waits for a client to return after the fault and notes its exit.
func (f *faultCase) wait(b *background, what string) result {
	r := b.wait(f.t, clientDeadline)
	msg := ""
	if r.code != 0 {
		// The message, shortened for the table: the container's name is C.
		l := strings.TrimPrefix(strings.TrimSpace(lastLine(r.stderr)), "runv: ")
		if l = strings.ReplaceAll(strings.ReplaceAll(l, `\"`+f.id+`\"`, "C"), `"`+f.id+`"`, "C"); l != "" {
			msg = " (" + truncate(l, 80) + ")"
		}
	}
	f.note("%s: exit %d%s", what, r.code, msg)
	if r.code != 0 && r.code != 137 && strings.TrimSpace(r.stderr) == "" {
		f.t.Errorf("%s failed with exit %d and no error message: %s", what, r.code, r)
	}
	return r
}

// waitProcessGone waits for a host process that must end with the pod.
func (f *faultCase) waitProcessGone(pid int, what string) {
	deadline := time.Now().Add(clientDeadline)
	for alive(pid) {
		if time.Now().After(deadline) {
			f.t.Errorf("%s (pid %d) still runs %s after the fault", what, pid, clientDeadline)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanup deletes the case's containers and checks that nothing of the pod is left.
func (f *faultCase) cleanup(force bool) {
	t := f.t
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	if r := f.runv("state", f.id); r.code != 0 && !force {
		// A foreground run deleted it (the case checked that state said so).
		f.note("deleted by runv run")
	} else if r := f.runv(append(args, f.id)...); r.code != 0 {
		t.Errorf("%s after the fault: %s", strings.Join(args, " "), r)
	} else {
		f.note("%s: ok", strings.Join(args, " "))
	}
	if f.sandbox != "" {
		if r := f.runv("delete", "--force", f.sandbox); r.code != 0 {
			t.Errorf("delete --force of the sandbox after the fault: %s", r)
		}
	}
	assertEmptyRoot(t, f.root)
	if after := f.net.snapshot(t); after != f.netBefore {
		t.Errorf("the pod's network namespace is not as before the pod (taps, qdiscs, filters, BPF links left?):\nbefore:\n%s\nafter:\n%s", f.netBefore, after)
	} else {
		f.note("netns as before")
	}
}

// checkHostCgroup fails the case if a host cgroup of its containers is left.
func (f *faultCase) checkHostCgroup() {
	left, _ := filepath.Glob("/sys/fs/cgroup/*" + f.cgroup + "*")
	if len(left) > 0 {
		f.t.Errorf("host cgroups left: %v", left)
		for _, d := range left {
			syscall.Rmdir(d)
		}
	}
}

// daemonFds returns the pod daemon's pid and its open descriptors.
func (f *faultCase) daemonFds() (int, int) {
	pids := findPids(f.root, "\x00containerd\x00")
	if len(pids) != 1 {
		f.t.Fatalf("want one pod daemon for %s, found %v", f.root, pids)
	}
	return pids[0], countFds(pids[0])
}

// checkDaemonFds waits for a surviving daemon to be back at its descriptors of before the
// fault.
func (f *faultCase) checkDaemonFds(pid, before int) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := countFds(pid)
		if n <= before {
			f.note("daemon fds %d → %d", before, n)
			return
		}
		if time.Now().After(deadline) {
			f.t.Errorf("the pod daemon holds %d descriptors after the fault, %d before: %v", n, before, fdTargets(pid))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countFds(pid int) int {
	e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(e)
}

func fdTargets(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	e, _ := os.ReadDir(dir)
	var out []string
	for _, x := range e {
		l, _ := os.Readlink(filepath.Join(dir, x.Name()))
		out = append(out, x.Name()+"→"+l)
	}
	return out
}

func (f *faultCase) runv(args ...string) result { return runvIn(f.t, f.root, nil, args...) }

func (f *faultCase) mustRunv(args ...string) result { return mustRunv(f.t, f.root, args...) }

func (f *faultCase) startRunv(args ...string) *background {
	return startRunv(f.t, f.root, nil, args...)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
