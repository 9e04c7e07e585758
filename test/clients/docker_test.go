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

// dockerBinary is Debian's docker CLI (docker.io); another docker may come first on PATH.
const dockerBinary = "/usr/bin/docker"

// dockerdEnv is the suite's private dockerd (Debian's docker.io) on the suite's containerd,
// with runv added as a runc-compatible runtime:
//
//	dockerd --iptables=false --ip6tables=false --bridge=BRIDGE --containerd SOCK \
//	        --add-runtime runv=/usr/local/bin/runv --data-root D --exec-root X --pidfile P -H unix://S
//
// containerd's runc shim runs runv with BinaryName=runv and --root under the exec root.
// BRIDGE is a bridge the suite makes (hostBridge): docker's default network, without
// touching the host's iptables or another dockerd's docker0.
type dockerdEnv struct {
	*service
	dir, host, execRoot string
	ctrd                *containerd
	bridge              *hostBridge
}

var (
	dockerd     *dockerdEnv
	dockerdOnce sync.Once
	dockerSkip  string
)

func needDocker(t *testing.T) *dockerdEnv {
	t.Helper()
	c := needContainerd(t)
	dockerdOnce.Do(func() {
		for _, b := range []string{"dockerd", dockerBinary} {
			if _, err := lookPath(b); err != nil {
				dockerSkip = fmt.Sprintf("%s is not installed (make client-deps: apt-get install docker.io)", b)
				return
			}
		}
		dir := filepath.Join(tmp, "d")
		d := &dockerdEnv{dir: dir, host: "unix://" + filepath.Join(dir, "docker.sock"), execRoot: filepath.Join(dir, "x"), ctrd: c}
		os.MkdirAll(filepath.Join(dir, "cli"), 0o755)
		// Not /etc/docker/daemon.json, nor root's ~/.docker: the suite's own.
		daemonJSON := filepath.Join(dir, "daemon.json")
		// runv twice: --add-runtime runv=PATH, and "runv-json" the daemon.json way.
		os.WriteFile(daemonJSON, []byte(fmt.Sprintf(`{"runtimes": {"runv-json": {"path": %q}}}`+"\n", runtimePath)), 0o644)
		br, err := newHostBridge(fmt.Sprintf("rvcd%d", os.Getpid()%10000), bridgeSubnet(0))
		if err != nil {
			dockerSkip = fmt.Sprintf("cannot make docker's bridge: %v", err)
			return
		}
		d.bridge = br
		dockerd = d
		s, err := startService("dockerd", filepath.Join(dir, "dockerd.log"), nil, "dockerd",
			"--config-file", daemonJSON,
			"--iptables=false", "--ip6tables=false", "--bridge="+br.name,
			"--containerd", c.address,
			"--add-runtime", "runv="+runtimePath,
			"--data-root", filepath.Join(dir, "data"), "--exec-root", d.execRoot,
			"--pidfile", filepath.Join(dir, "docker.pid"), "-H", d.host)
		if err != nil {
			dockerSkip = fmt.Sprintf("cannot start dockerd: %v", err)
			return
		}
		d.service = s
		dockerd = d
		if err := s.waitReady(60*time.Second, func() error {
			_, err := d.quiet(10*time.Second, "version")
			return err
		}); err != nil {
			dockerSkip = fmt.Sprintf("dockerd does not come up on this machine: %v", err)
			return
		}
		if out, _ := d.quiet(30*time.Second, "info", "--format", "{{json .Runtimes}}"); !strings.Contains(out, `"runv"`) {
			dockerSkip = fmt.Sprintf("dockerd did not register runtime runv (--add-runtime runv=%s): docker info: %s", runtimePath, out)
			return
		}
		if out, err := d.quiet(2*time.Minute, "load", "-i", img.Path); err != nil {
			dockerSkip = fmt.Sprintf("docker cannot load the test image: %v\n%s", err, out)
		}
	})
	if dockerSkip != "" {
		t.Skip(dockerSkip)
	}
	return dockerd
}

// args are the CLI's global options for the suite (its own config directory, not root's
// ~/.docker), then args.
func (d *dockerdEnv) args(args ...string) []string {
	return append([]string{"--config", filepath.Join(d.dir, "cli"), "-H", d.host}, args...)
}

// idOf finds a container's id from its name in dockerd's data root, without asking dockerd
// (which may be stuck on it).
func (d *dockerdEnv) idOf(name string) string {
	configs, _ := filepath.Glob(filepath.Join(d.dir, "data", "containers", "*", "config.v2.json"))
	for _, c := range configs {
		if strings.Contains(readAll(c), `"Name":"/`+name+`"`) {
			return filepath.Base(filepath.Dir(c))
		}
	}
	return ""
}

func (d *dockerdEnv) docker(t *testing.T, o cmdOpts, args ...string) result {
	t.Helper()
	return runCmd(t, o, dockerBinary, d.args(args...)...)
}

func (d *dockerdEnv) quiet(timeout time.Duration, args ...string) (string, error) {
	return quiet(timeout, dockerBinary, d.args(args...)...)
}

// roots: the runc shim runs runv with --root <exec-root>/runtime-<name>/<namespace>.
func (d *dockerdEnv) roots() []string {
	roots := []string{filepath.Join(d.execRoot, "runtime-runc", "moby"), filepath.Join(d.execRoot, "runtime-runv", "moby")}
	found, _ := filepath.Glob(filepath.Join(d.execRoot, "runtime-*", "*"))
	for _, f := range found {
		if f != roots[0] && f != roots[1] {
			roots = append(roots, f)
		}
	}
	return roots
}

func (d *dockerdEnv) logFiles() []string { return []string{d.log, d.ctrd.log} }
func (d *dockerdEnv) extraLogs() string {
	return shimLogs(filepath.Join(d.ctrd.dir, "state", "io.containerd.runtime.v2.task", "moby"))
}

func (d *dockerdEnv) stop() (problems []string) {
	if d.bridge != nil {
		defer d.bridge.remove()
	}
	if d.service == nil {
		return nil
	}
	if d.exited() {
		return []string{fmt.Sprintf("dockerd exited during the suite (%v); see %s", d.cmd.ProcessState, d.log)}
	}
	if out, err := d.quiet(time.Minute, "ps", "-aq"); err == nil {
		for _, id := range strings.Fields(out) {
			problems = append(problems, "docker container left: "+id)
			d.quiet(time.Minute, "rm", "-f", id)
		}
	}
	return append(problems, d.terminate(45*time.Second)...)
}

// newDockerTest starts a docker test; its container (named name) is removed afterwards, by
// force if a runtime call hangs.
func newDockerTest(t *testing.T) (*dockerdEnv, *tc, string) {
	d := needDocker(t)
	x := newTC(t, d)
	name := newName(t)
	x.track(name)
	t.Cleanup(func() {
		id := d.idOf(name)
		if id == "" {
			return // gone
		}
		x.track(id)
		t.Logf("cleanup: docker rm -f %s", name)
		out, err := d.quiet(60*time.Second, "rm", "-f", name)
		if err == nil || strings.Contains(out, "No such container") {
			killStuckShims(t, d.ctrd.address, id)
			return
		}
		// A runtime call that never returns holds containerd's shim: kill it, then retry.
		t.Errorf("cleanup: %v", err)
		killStuckShims(t, d.ctrd.address, id)
		if _, err := d.quiet(60*time.Second, "rm", "-f", name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d, x, name
}

// TestDockerRun: docker run --runtime runv prints the guest kernel's release.
func TestDockerRun(t *testing.T) {
	d, x, name := newDockerTest(t)
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name, img.Name, "uname", "-r"))
	checkGuestRelease(x, r)
}

// TestDockerRuntimeFromDaemonJSON: runv registered in daemon.json ("runtimes": {"runv-json":
// {"path": PATH}}) works as one from --add-runtime.
func TestDockerRuntimeFromDaemonJSON(t *testing.T) {
	d, x, name := newDockerTest(t)
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv-json", "--name", name, img.Name, "uname", "-r"))
	checkGuestRelease(x, r)
}

// TestDockerExitCode: the container's exit code and both output streams come through.
func TestDockerExitCode(t *testing.T) {
	d, x, name := newDockerTest(t)
	r := d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name, img.Name, "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		x.fatal(r, "want exit 3, stdout \"out\\n\", stderr \"err\\n\"")
	}
}

// TestDockerRunOptions: the options people use most reach the container in the VM: a bind
// mount of a host directory (read and written back), environment, working directory, user,
// hostname, read-only root with a tmpfs, a memory limit (on the container's cgroup in the
// guest) and --init (docker-init, a host file bound in).
func TestDockerRunOptions(t *testing.T) {
	d, x, name := newDockerTest(t)
	vol := t.TempDir()
	os.WriteFile(filepath.Join(vol, "in"), []byte("from the host\n"), 0o644)
	os.Chmod(vol, 0o777)
	script := `cat /data/in; echo from the guest > /data/out; echo "$FOO"; pwd; id -u; hostname
touch /x 2>/dev/null || echo read-only; touch /scratch/y && echo tmpfs-ok
cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max; ps -o comm | sed -n 2p`
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name,
		"-v", vol+":/data", "-e", "FOO=bar", "-w", "/tmp", "-u", "65534", "--hostname", "runv-host",
		"--read-only", "--tmpfs", "/scratch", "-m", "100m", "--init", img.Name, "sh", "-c", script))
	want := "from the host\nbar\n/tmp\n65534\nrunv-host\nread-only\ntmpfs-ok\n104857600\ndocker-init\n"
	if r.stdout != want {
		x.errorf(r, "want output %q", want)
	}
	if got := readAll(filepath.Join(vol, "out")); got != "from the guest\n" {
		x.errorf(r, "the container's write to the bind mount: the host reads %q, want \"from the guest\\n\"", got)
	}
}

// TestDockerStdin: docker run -i passes its stdin through.
func TestDockerStdin(t *testing.T) {
	d, x, name := newDockerTest(t)
	r := x.must(d.docker(t, cmdOpts{stdin: "hello from the host\n"}, "run", "--rm", "-i", "--runtime", "runv", "--name", name, img.Name, "sh", "-c", "read l; echo \"got: $l\""))
	if r.stdout != "got: hello from the host\n" {
		x.fatal(r, "stdin did not reach the container")
	}
}

// TestDockerDetachStopRm: run -d, ps shows it up, stop delivers SIGTERM (the trap's exit
// code is recorded), rm removes it.
func TestDockerDetachStopRm(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sh", "-c", trapScript))
	r := x.must(d.docker(t, cmdOpts{}, "ps", "--filter", "name=^"+name+"$", "--format", "{{.Status}}"))
	if !strings.HasPrefix(strings.TrimSpace(r.stdout), "Up") {
		x.fatal(r, "container %s is not up after run -d", name)
	}
	if !waitFor(30*time.Second, func() bool { out, _ := d.quiet(10*time.Second, "logs", name); return out == "ready\n" }) {
		x.fatal(d.docker(t, cmdOpts{}, "logs", name), "the container did not print \"ready\" within 30s")
	}
	x.must(d.docker(t, cmdOpts{}, "stop", "-t", "30", name))
	r = x.must(d.docker(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name))
	if strings.TrimSpace(r.stdout) != "exited 7" {
		x.errorf(r, "want \"exited 7\" after docker stop (SIGTERM caught by the trap)")
	}
	x.must(d.docker(t, cmdOpts{}, "rm", name))
}

// TestDockerKill: docker kill stops a container that ignores SIGTERM with SIGKILL: 137.
func TestDockerKill(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sleep", "1000"))
	x.must(d.docker(t, cmdOpts{}, "kill", name))
	r := x.must(d.docker(t, cmdOpts{}, "wait", name))
	if strings.TrimSpace(r.stdout) != "137" {
		x.errorf(r, "want exit code 137 after docker kill (SIGKILL)")
	}
	x.must(d.docker(t, cmdOpts{}, "rm", name))
}

// TestDockerOOMKilled: a container the guest's OOM killer ends is reported OOMKilled, as
// with runc: docker learns it from containerd's runc shim, which watches the host cgroup of
// runv's stand-in, where the stand-in then dies of an OOM kill of its own.
func TestDockerOOMKilled(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "-m", "32m", "--name", name, img.Name, "sh", "-c", memoryHog))
	r := x.must(d.docker(t, cmdOpts{}, "wait", name))
	if strings.TrimSpace(r.stdout) != "137" {
		x.errorf(r, "want exit code 137 (killed by the OOM killer)")
	}
	r = x.must(d.docker(t, cmdOpts{}, "inspect", "-f", "{{.State.OOMKilled}}", name))
	if strings.TrimSpace(r.stdout) != "true" {
		x.errorf(r, "want State.OOMKilled true")
	}
	x.must(d.docker(t, cmdOpts{}, "rm", name))
}

// TestDockerPrivileged: a privileged container is privileged in its VM: it can mount, and
// its /dev holds the VM's devices, each of a major its kernel has (/proc/devices), not the
// host's that docker lists in the spec (the host's loop and disk devices, say).
func TestDockerPrivileged(t *testing.T) {
	d, x, name := newDockerTest(t)
	script := `mkdir /m && mount -t tmpfs none /m && echo mounted
for f in /dev/*; do
	[ -L "$f" ] && continue
	if [ -b "$f" ]; then kind=Block; elif [ -c "$f" ]; then kind=Character; else continue; fi
	major=$((0x$(stat -c %t "$f")))
	sed -n "/^$kind/,/^\$/p" /proc/devices | grep -q "^ *$major " || echo "not a device of this kernel: $f ($kind $major)"
done
[ -c /dev/kmsg ] && echo kmsg`
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--privileged", "--name", name, img.Name, "sh", "-c", script))
	if r.stdout != "mounted\nkmsg\n" {
		x.errorf(r, "want \"mounted\\nkmsg\\n\": a mount, and only devices of the VM's kernel")
	}
}

// TestDockerLogs: the output of a detached container reaches docker logs.
func TestDockerLogs(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sh", "-c", "echo hello-logs; uname -r"))
	r := x.must(d.docker(t, cmdOpts{}, "wait", name))
	if strings.TrimSpace(r.stdout) != "0" {
		x.errorf(r, "want exit code 0")
	}
	r = x.must(d.docker(t, cmdOpts{}, "logs", name))
	if r.stdout != "hello-logs\n"+guestRelease+"\n" {
		x.errorf(r, "want the container's output in docker logs")
	}
	x.must(d.docker(t, cmdOpts{}, "rm", name))
}

// TestDockerExec: docker exec runs a process in the container's VM.
func TestDockerExec(t *testing.T) {
	if !hasExec {
		t.Skip(execWhy)
	}
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sleep", "1000"))
	r := d.docker(t, cmdOpts{}, "exec", name, "sh", "-c", "uname -r; exit 5")
	if r.code != 5 || strings.TrimSpace(r.stdout) != guestRelease {
		x.errorf(r, "want the guest kernel %s and exit 5 from the exec", guestRelease)
	}
	r = d.docker(t, cmdOpts{stdin: "in\n"}, "exec", "-i", name, "cat")
	if r.code != 0 || r.stdout != "in\n" {
		x.errorf(r, "want stdin echoed by exec -i cat")
	}
	r = runInPty(t, 60*time.Second, dockerBinary, d.args("exec", "-it", name, "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r")...)
	checkTerminal(x, r)
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}

// TestDockerTopPause: docker top lists the container's processes (runv ps --format json),
// docker pause and unpause change its state.
func TestDockerTopPause(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sleep", "1000"))
	r := x.must(d.docker(t, cmdOpts{}, "top", name))
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) < 2 {
		x.errorf(r, "want a header and at least one process from docker top")
	}
	x.must(d.docker(t, cmdOpts{}, "pause", name))
	if r := x.must(d.docker(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}}", name)); strings.TrimSpace(r.stdout) != "paused" {
		x.errorf(r, "want paused after docker pause")
	}
	x.must(d.docker(t, cmdOpts{}, "unpause", name))
	if r := x.must(d.docker(t, cmdOpts{}, "inspect", "-f", "{{.State.Status}}", name)); strings.TrimSpace(r.stdout) != "running" {
		x.errorf(r, "want running after docker unpause")
	}
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}

// TestDockerSharedNamespaces: a container started with --network container:A --pid
// container:A joins A's pod VM (same kernel boot id, A's processes visible); a container on
// its own gets a VM of its own.
func TestDockerSharedNamespaces(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sleep", "1000"))
	bootA := strings.TrimSpace(x.must(d.docker(t, cmdOpts{}, "exec", name, "cat", "/proc/sys/kernel/random/boot_id")).stdout)
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--network", "container:"+name, "--pid", "container:"+name,
		img.Name, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; ps -o args"))
	if lines := strings.SplitN(r.stdout, "\n", 2); lines[0] != bootA || !strings.Contains(r.stdout, "sleep 1000") {
		x.errorf(r, "want A's VM (boot id %s) and A's sleep 1000 in ps", bootA)
	}
	r = x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", img.Name, "cat", "/proc/sys/kernel/random/boot_id"))
	if strings.TrimSpace(r.stdout) == bootA {
		x.errorf(r, "a container of its own ran in A's VM (boot id %s)", bootA)
	}
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}

// TestDockerLoopback: the container's loopback interface is up, as docker leaves it with
// runc (docker brings lo up in the network namespace it makes; with runv the container is in
// the VM's network namespace instead, where the agent must do it).
func TestDockerLoopback(t *testing.T) {
	d, x, name := newDockerTest(t)
	script := "ip -o link show lo; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo ping-ok"
	ref := d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runc", img.Name, "sh", "-c", script)
	r := d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name, img.Name, "sh", "-c", script)
	if !strings.Contains(r.stdout, ",UP") || !strings.Contains(r.stdout, "ping-ok") {
		x.errorf(r, "loopback is not up in the container (with runc: %q, exit %d)", ref.stdout, ref.code)
	}
}

// TestDockerMissingCommand: a command that is not in the image fails as with runc: exit
// 127, nothing left behind.
func TestDockerMissingCommand(t *testing.T) {
	d, x, name := newDockerTest(t)
	r := d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name, img.Name, "/no/such/command")
	if r.code != 127 || !strings.Contains(r.stderr, "/no/such/command") {
		x.errorf(r, "want exit 127 and an error naming the command")
	}
}

// TestDockerTerminal: docker run -it gives the container a terminal (runv create
// --console-socket: containerd's runc shim waits for the pty master).
func TestDockerTerminal(t *testing.T) {
	d, x, name := newDockerTest(t)
	r := runInPty(t, 60*time.Second, dockerBinary, d.args("run", "--rm", "-it", "--runtime", "runv", "--name", name, img.Name,
		"sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r")...)
	checkTerminal(x, r)
}
