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
		conf, err := filepath.Abs("testdata/podman-containers.conf")
		if err != nil {
			podmanSkip = err.Error()
			return
		}
		p := &podmanEnv{dir: filepath.Join(tmp, "p"), conf: conf}
		os.MkdirAll(filepath.Join(p.dir, "tmp"), 0o755)
		podman, podmanSetUp = p, true
		// Only podman reads it; set for every podman the suite runs (on a pty too).
		os.Setenv("CONTAINERS_CONF", conf)
		if out, err := quiet(2*time.Minute, "podman", p.args("load", "-i", img.Path)...); err != nil {
			podmanSkip = fmt.Sprintf("podman cannot load the test image on this machine: %v\n%s", err, out)
		}
	})
	if podmanSkip != "" {
		t.Skip(podmanSkip)
	}
	return podman
}

// args are podman's global options for the suite, then args.
func (p *podmanEnv) args(args ...string) []string {
	return append([]string{"--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "runroot"),
		"--tmpdir", filepath.Join(p.dir, "tmp"), "--runtime", runtimePath}, args...)
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

// TestPodmanExitCode: the container's exit code and both output streams come through.
func TestPodmanExitCode(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := p.podman(t, cmdOpts{}, "run", "--rm", "--name", name, img.Name, "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		x.fatal(r, "want exit 3, stdout \"out\\n\", stderr \"err\\n\"")
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
	x.must(p.podman(t, cmdOpts{}, "run", "-d", "--name", name, img.Name, "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.2; done"))
	r := x.must(p.podman(t, cmdOpts{}, "ps", "--filter", "name=^"+name+"$", "--format", "{{.Status}}"))
	if !strings.HasPrefix(strings.TrimSpace(r.stdout), "Up") {
		x.fatal(r, "container %s is not up after run -d", name)
	}
	time.Sleep(500 * time.Millisecond) // let the shell install its trap
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
	x.must(p.podman(t, cmdOpts{}, "rm", "-f", "-t", "1", name))
}

// TestPodmanTerminal: podman run -it gives the container a terminal (runv create
// --console-socket, conmon's socket).
func TestPodmanTerminal(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := runInPty(t, 60*time.Second, "podman", p.args("run", "--rm", "-it", "--name", name, img.Name,
		"sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r")...)
	checkTerminal(x, r)
}
