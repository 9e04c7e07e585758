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

// podman runs rootful with storage and state of its own under the work directory and
// testdata/podman-containers.conf (cgroupfs, file events, ulimits this machine allows, no
// network). It passes runv no --root: runv's root is its default, /run/runv.
type podmanEnv struct {
	dir  string
	conf string
	// bridge is the host end of the suite's default network (podmanNetwork).
	bridge *hostBridge
}

var (
	podman      *podmanEnv
	podmanOnce  sync.Once
	podmanSetUp bool
	podmanSkip  string
)

// defaultRoot is runv's state root when a client passes none (podman).
const defaultRoot = "/run/runv"

func needPodman(t *testing.T) *podmanEnv {
	t.Helper()
	podmanOnce.Do(func() {
		for _, b := range []string{"podman", "conmon"} {
			if _, err := lookPath(b); err != nil {
				podmanSkip = fmt.Sprintf("%s is not installed (make client-deps: apt-get install podman)", b)
				return
			}
		}
		// The machine's settings, plus runv registered by name as users do it.
		base, err := os.ReadFile("testdata/podman-containers.conf")
		if err != nil {
			podmanSkip = err.Error()
			return
		}
		p := &podmanEnv{dir: filepath.Join(tmp, "p")}
		os.MkdirAll(filepath.Join(p.dir, "tmp"), 0o755)
		p.conf = filepath.Join(p.dir, "containers.conf")
		network, err := podmanNetwork(filepath.Join(p.dir, "cni"))
		if err != nil {
			podmanSkip = err.Error()
			return
		}
		p.bridge = network.bridge
		conf := fmt.Sprintf("%s\n%s\n[engine.runtimes]\nrunv = [%q]\n", base, network.conf, runtimePath)
		if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
			podmanSkip = err.Error()
			return
		}
		podman, podmanSetUp = p, true
		// Only podman reads it; set for every podman the suite runs (on a pty too).
		os.Setenv("CONTAINERS_CONF", p.conf)
		if out, err := quiet(2*time.Minute, "podman", p.args("load", "-i", img.Path)...); err != nil {
			podmanSkip = fmt.Sprintf("podman cannot load the test image on this machine: %v\n%s", err, out)
		}
	})
	if podmanSkip != "" {
		t.Skip(podmanSkip)
	}
	return podman
}

// args are podman's global options for the suite, then args. The runtime is given by path.
func (p *podmanEnv) args(args ...string) []string {
	return append([]string{"--runtime", runtimePath}, p.argsNoRuntime(args...)...)
}

func (p *podmanEnv) argsNoRuntime(args ...string) []string {
	return append([]string{"--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "runroot"),
		"--tmpdir", filepath.Join(p.dir, "tmp")}, args...)
}

func (p *podmanEnv) env() []string { return []string{"CONTAINERS_CONF=" + p.conf} }

func (p *podmanEnv) podman(t *testing.T, o cmdOpts, args ...string) result {
	t.Helper()
	o.env = append(o.env, p.env()...)
	r := runCmd(t, o, "podman", p.args(args...)...)
	r.cmdline = "CONTAINERS_CONF=" + p.conf + " " + r.cmdline
	return r
}

func (p *podmanEnv) quiet(timeout time.Duration, args ...string) (string, error) {
	return quiet(timeout, "podman", p.args(args...)...)
}

func (p *podmanEnv) roots() []string { return []string{defaultRoot} }
func (p *podmanEnv) logFiles() []string {
	return []string{filepath.Join(p.dir, "tmp", "events", "events.log")}
}
func (p *podmanEnv) extraLogs() string { return "" }

func podmanTeardown() (problems []string) {
	if podman == nil {
		return nil
	}
	// The CNI bridge plugin makes the bridge and leaves it.
	defer podman.bridge.remove()
	out, err := podman.quiet(time.Minute, "ps", "-aq")
	if err != nil {
		return []string{fmt.Sprintf("podman ps: %v", err)}
	}
	for _, id := range strings.Fields(out) {
		problems = append(problems, "podman container left: "+id)
		podman.quiet(time.Minute, "rm", "-f", id)
	}
	return problems
}

// newPodmanTest starts a podman test; its container (named name) is removed afterwards.
func newPodmanTest(t *testing.T) (*podmanEnv, *tc, string) {
	p := needPodman(t)
	x := newTC(t, p)
	name := newName(t)
	x.track(name)
	t.Cleanup(func() {
		if out, _ := p.quiet(30*time.Second, "ps", "-aq", "--filter", "name=^"+name+"$"); strings.TrimSpace(out) == "" {
			return
		}
		// Track the id too: conmon and runv name the container by it.
		if id, err := p.quiet(30*time.Second, "inspect", "-f", "{{.Id}}", name); err == nil {
			x.track(strings.TrimSpace(id))
		}
		t.Logf("cleanup: podman rm -f %s", name)
		if _, err := p.quiet(90*time.Second, "rm", "-f", "-t", "2", name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p, x, name
}

// TestPodmanRun: podman run --rm with runv prints the guest kernel's release.
func TestPodmanRun(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := x.must(p.podman(t, cmdOpts{}, "run", "--rm", "--name", name, img.Name, "uname", "-r"))
	checkGuestRelease(x, r)
}

// TestPodmanRuntimeByName: runv registered in containers.conf ([engine.runtimes] runv =
// [PATH]) is chosen with --runtime runv.
func TestPodmanRuntimeByName(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := runCmd(t, cmdOpts{}, "podman", p.argsNoRuntime("--runtime", "runv", "run", "--rm", "--name", name, img.Name, "uname", "-r")...)
	r.cmdline = "CONTAINERS_CONF=" + p.conf + " " + r.cmdline
	checkGuestRelease(x, x.must(r))
}

// TestPodmanExitCode: the container's exit code and both output streams come through.
func TestPodmanExitCode(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := p.podman(t, cmdOpts{}, "run", "--rm", "--name", name, img.Name, "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		x.fatal(r, "want exit 3, stdout \"out\\n\", stderr \"err\\n\"")
	}
}

// TestPodmanVolume: a host directory bound with -v is read and written from the VM.
func TestPodmanVolume(t *testing.T) {
	p, x, name := newPodmanTest(t)
	vol := t.TempDir()
	os.WriteFile(filepath.Join(vol, "in"), []byte("from the host\n"), 0o644)
	r := x.must(p.podman(t, cmdOpts{}, "run", "--rm", "--name", name, "-v", vol+":/data", "-e", "FOO=bar", img.Name,
		"sh", "-c", "cat /data/in; echo from the guest > /data/out; echo $FOO"))
	if r.stdout != "from the host\nbar\n" {
		x.errorf(r, "want the host file's content and the environment")
	}
	if got := readAll(filepath.Join(vol, "out")); got != "from the guest\n" {
		x.errorf(r, "the container's write to the bind mount: the host reads %q, want \"from the guest\\n\"", got)
	}
}

// TestPodmanStdin: podman run -i passes its stdin through.
func TestPodmanStdin(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := x.must(p.podman(t, cmdOpts{stdin: "hello from the host\n"}, "run", "--rm", "-i", "--name", name, img.Name, "sh", "-c", "read l; echo \"got: $l\""))
	if r.stdout != "got: hello from the host\n" {
		x.fatal(r, "stdin did not reach the container")
	}
}

// TestPodmanDetachStopRm: run -d, ps shows it up, stop delivers SIGTERM (the trap's exit
// code is recorded), rm removes it.
func TestPodmanDetachStopRm(t *testing.T) {
	p, x, name := newPodmanTest(t)
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--name", name, img.Name, "sh", "-c", trapScript))
	r := x.must(p.podman(t, cmdOpts{}, "ps", "--filter", "name=^"+name+"$", "--format", "{{.Status}}"))
	if !strings.HasPrefix(strings.TrimSpace(r.stdout), "Up") {
		x.fatal(r, "container %s is not up after run -d", name)
	}
	if !waitFor(30*time.Second, func() bool { out, _ := p.quiet(10*time.Second, "logs", name); return out == "ready\n" }) {
		x.fatal(p.podman(t, cmdOpts{}, "logs", name), "the container did not print \"ready\" within 30s")
	}
	x.must(p.podman(t, cmdOpts{}, "stop", "-t", "30", name))
	r = x.must(p.podman(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name))
	if strings.TrimSpace(r.stdout) != "exited 7" {
		x.errorf(r, "want \"exited 7\" after podman stop (SIGTERM caught by the trap)")
	}
	x.must(p.podman(t, cmdOpts{}, "rm", name))
}

// TestPodmanKill: podman kill stops a container that ignores SIGTERM (PID 1 without a
// handler) with SIGKILL: 137.
func TestPodmanKill(t *testing.T) {
	p, x, name := newPodmanTest(t)
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--name", name, img.Name, "sleep", "1000"))
	x.must(p.podman(t, cmdOpts{}, "kill", name))
	r := x.must(p.podman(t, cmdOpts{}, "wait", name))
	if strings.TrimSpace(r.stdout) != "137" {
		x.errorf(r, "want exit code 137 after podman kill (SIGKILL)")
	}
	x.must(p.podman(t, cmdOpts{}, "rm", name))
}

// TestPodmanLogs: the output of a detached container reaches podman logs.
func TestPodmanLogs(t *testing.T) {
	p, x, name := newPodmanTest(t)
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--name", name, img.Name, "sh", "-c", "echo hello-logs; uname -r"))
	r := x.must(p.podman(t, cmdOpts{}, "wait", name))
	if strings.TrimSpace(r.stdout) != "0" {
		x.errorf(r, "want exit code 0")
	}
	r = x.must(p.podman(t, cmdOpts{}, "logs", name))
	if r.stdout != "hello-logs\n"+guestRelease+"\n" {
		x.errorf(r, "want the container's output in podman logs")
	}
	x.must(p.podman(t, cmdOpts{}, "rm", name))
}

// TestPodmanExec: podman exec runs a process in the container's VM.
func TestPodmanExec(t *testing.T) {
	if !hasExec {
		t.Skip(execWhy)
	}
	p, x, name := newPodmanTest(t)
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--name", name, img.Name, "sleep", "1000"))
	r := p.podman(t, cmdOpts{}, "exec", name, "sh", "-c", "uname -r; exit 5")
	if r.code != 5 || strings.TrimSpace(r.stdout) != guestRelease {
		x.errorf(r, "want the guest kernel %s and exit 5 from the exec", guestRelease)
	}
	r = p.podman(t, cmdOpts{stdin: "in\n"}, "exec", "-i", name, "cat")
	if r.code != 0 || r.stdout != "in\n" {
		x.errorf(r, "want stdin echoed by exec -i cat")
	}
	r = runInPty(t, 60*time.Second, "podman", p.args("exec", "-it", name, "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r")...)
	checkTerminal(x, r)
	x.must(p.podman(t, cmdOpts{}, "rm", "-f", "-t", "1", name))
}

// TestPodmanPause: podman pause and unpause change the container's state.
func TestPodmanPause(t *testing.T) {
	p, x, name := newPodmanTest(t)
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--name", name, img.Name, "sleep", "1000"))
	x.must(p.podman(t, cmdOpts{}, "pause", name))
	if r := x.must(p.podman(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}}", name)); strings.TrimSpace(r.stdout) != "paused" {
		x.errorf(r, "want paused after podman pause")
	}
	x.must(p.podman(t, cmdOpts{}, "unpause", name))
	if r := x.must(p.podman(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}}", name)); strings.TrimSpace(r.stdout) != "running" {
		x.errorf(r, "want running after podman unpause")
	}
	x.must(p.podman(t, cmdOpts{}, "rm", "-f", "-t", "1", name))
}

// TestPodmanPod: containers of a podman pod (default infra container: catatonit in
// podman's local pause image) run in the pod's VM; a container outside runs in its own.
func TestPodmanPod(t *testing.T) {
	p, x, name := newPodmanTest(t)
	pod := name + "-pod"
	t.Cleanup(func() { p.quiet(90*time.Second, "pod", "rm", "-f", "--ignore", pod) })
	x.must(p.podman(t, cmdOpts{}, "pod", "create", "--name", pod))
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--pod", pod, "--name", name, img.Name, "sleep", "1000"))
	bootA := strings.TrimSpace(x.must(p.podman(t, cmdOpts{}, "exec", name, "cat", "/proc/sys/kernel/random/boot_id")).stdout)
	r := x.must(p.podman(t, cmdOpts{}, "run", "--rm", "--pod", pod, img.Name, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; hostname"))
	if r.stdout != bootA+"\n"+pod+"\n" {
		x.errorf(r, "want the pod's VM (boot id %s) and its hostname %s", bootA, pod)
	}
	r = x.must(p.podman(t, cmdOpts{}, "run", "--rm", img.Name, "cat", "/proc/sys/kernel/random/boot_id"))
	if strings.TrimSpace(r.stdout) == bootA {
		x.errorf(r, "a container outside the pod ran in the pod's VM (boot id %s)", bootA)
	}
	x.must(p.podman(t, cmdOpts{}, "pod", "rm", "-f", "-t", "1", pod))
}

// TestPodmanMissingCommand: a command that is not in the image fails as with runc: exit
// 127, and podman's cleanup (runv delete --force of a container that was never created)
// succeeds.
func TestPodmanMissingCommand(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := p.podman(t, cmdOpts{}, "run", "--rm", "--name", name, img.Name, "/no/such/command")
	if r.code != 127 || !strings.Contains(r.stderr, "/no/such/command") {
		x.errorf(r, "want exit 127 and an error naming the command")
	}
	if strings.Contains(r.stderr, "after creation failed") {
		x.errorf(r, "podman could not remove the failed container from the runtime (runv delete --force must succeed for a container that does not exist, as runc's does)")
	}
}

// TestPodmanTerminal: podman run -it gives the container a terminal (runv create
// --console-socket, conmon's socket).
func TestPodmanTerminal(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := runInPty(t, 60*time.Second, "podman", p.args("run", "--rm", "-it", "--name", name, img.Name,
		"sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r")...)
	checkTerminal(x, r)
}

// TestPodmanOOMKilled: a container the guest's OOM killer ends exits 137, as with runc
// (conmon watches the host cgroup of runv's stand-in, which then dies of an OOM kill of its
// own); an exec the guest's OOM killer ends exits 137 and leaves its container running.
// conmon records each OOM kill as a file named oom in its working directory, which podman
// 4.3 leaves at its own: the suite runs its clients in workDir, and its teardown fails if
// anything appeared in the source tree. (State.OOMKilled is not checked: podman 4.3 looks
// for that file in the bundle instead, and reports false with runc too.)
func TestPodmanOOMKilled(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := p.podman(t, cmdOpts{}, "run", "-m", "32m", "--name", name, img.Name, "sh", "-c", memoryHog)
	if r.code != 137 {
		x.errorf(r, "want exit code 137 (killed by the OOM killer)")
	}
	x.must(p.podman(t, cmdOpts{}, "rm", name))

	x.must(p.podman(t, cmdOpts{}, "run", "-d", "-m", "48m", "--name", name, img.Name, "sleep", "1000"))
	r = p.podman(t, cmdOpts{}, "exec", name, "sh", "-c", memoryHog)
	if r.code != 137 {
		x.errorf(r, "want exit code 137 from the exec the OOM killer ended")
	}
	r = x.must(p.podman(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}}", name))
	if strings.TrimSpace(r.stdout) != "running" {
		x.errorf(r, "want the container running after its exec was OOM-killed")
	}
	x.must(p.podman(t, cmdOpts{}, "rm", "-f", "-t", "1", name))
}
