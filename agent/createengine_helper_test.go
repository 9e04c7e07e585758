package agent

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/convert"
)

// The exec helper's create mode, run on the host as the agent runs it in the guest: a
// container made from a busybox rootfs, checked from inside by what a user of the
// container sees (its pid, hostname, /dev, mounts, read-only and masked paths), and a
// mount through a symlink that points out of the rootfs lands inside it.

// busyboxRootfs makes a rootfs holding a static busybox as /bin/sh, or skips.
func busyboxRootfs(t *testing.T, dir string) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox on the host for the container's rootfs")
	}
	if out, _ := exec.Command("file", "-L", bb).Output(); !strings.Contains(string(out), "statically linked") {
		t.Skipf("%s is not statically linked (busybox-static)", bb)
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "etc", "proc", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sh", "cat", "hostname", "readlink", "touch", "ls", "stat", "wc", "grep"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	return rootfs
}

// createInit has the helper make the init of req's container with that stdio (nil:
// /dev/null): the init, its report pipe and the write end of its start pipe.
func createInit(t *testing.T, helper string, req *convert.ExecRequest, stdio [3]*os.File, tr *stepTrace) (*childProcess, *os.File, *os.File, error) {
	t.Helper()
	dirs := cgroupDirs("")
	if len(dirs) == 0 {
		t.Skip("no cgroup v2 hierarchy on the host to start the helper in (CLONE_INTO_CGROUP)")
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { startW.Close() })
	proc, report, err := runExecHelper(helper, req, stdio, nil, nil, startR, dirs, tr)
	startR.Close()
	if err == nil {
		t.Cleanup(func() { report.Close() })
	}
	return proc, report, startW, err
}

func TestCreateHelperMakesTheContainer(t *testing.T) {
	helper := buildExecHelper(t)
	dir := t.TempDir()
	rootfs := busyboxRootfs(t, dir)
	// /escape points out of the rootfs; a mount under it must stay inside.
	outside := filepath.Join(dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../outside", filepath.Join(rootfs, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(rootfs, "outside"), 0o755); err != nil { // where it resolves in the rootfs
		t.Fatal(err)
	}
	// The tmpfs on /tmp takes the mode of its mountpoint; HOME comes from the rootfs's
	// passwd, read line by line (a line longer than the helper's buffer, the last one
	// without a newline).
	if err := os.Chmod(filepath.Join(rootfs, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	passwd := strings.Repeat("x", 5000) + "\nsp:x: 1:0::/not-this:/bin/sh\nroot:x:0:0:root:/root-home:/bin/sh"
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	hello := filepath.Join(dir, "hello")
	if err := os.WriteFile(hello, []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := &configs.Config{
		Rootfs:     rootfs,
		Readonlyfs: true,
		Hostname:   "engine-test",
		Namespaces: configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}, {Type: configs.NEWUTS}, {Type: configs.NEWIPC}},
		Mounts: []*configs.Mount{
			{Source: "proc", Destination: "/proc", Device: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
			{Source: "tmpfs", Destination: "/dev", Device: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_STRICTATIME, Data: "mode=755,size=65536k"},
			{Source: "devpts", Destination: "/dev/pts", Device: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "newinstance,ptmxmode=0666,mode=0620"},
			{Source: "tmpfs", Destination: "/tmp", Device: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_RDONLY},
			{Source: hello, Destination: "/etc/hello", Device: "bind", Flags: unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY},
			{Source: "tmpfs", Destination: "/escape/inner", Device: "tmpfs", Flags: unix.MS_NOSUID},
		},
		Devices: []*config.Device{
			{Path: "/dev/null", Rule: config.Rule{Type: config.CharDevice, Major: 1, Minor: 3}, FileMode: 0o666},
			{Path: "/dev/zero", Rule: config.Rule{Type: config.CharDevice, Major: 1, Minor: 5}, FileMode: 0o666},
		},
		ReadonlyPaths: []string{"/proc/sys"},
		MaskPaths:     []string{"/proc/timer_list", "/proc/kcore", "/proc/scsi", "/proc/acpi"},
	}
	script := `echo pid=$$; hostname
[ -c /dev/null ] && echo null=$(stat -c %t:%T /dev/null)
echo ptmx=$(readlink /dev/ptmx) fd=$(readlink /dev/fd)
touch /x 2>/dev/null || echo root-ro
touch /tmp/x 2>/dev/null || echo tmp-ro
cat /etc/hello
touch /proc/sys/kernel/x 2>/dev/null || echo sys-ro
echo timer_list=$(cat /proc/timer_list | wc -c)
grep -q ' /escape/inner ' /proc/self/mountinfo || grep -q ' /outside/inner ' /proc/self/mountinfo && echo inner-mounted
echo umask=$(umask) home=$HOME tmpmode=$(stat -c %a /tmp)`
	req := &convert.ExecRequest{Args: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/bin"}, Cwd: "/", ConsoleFD: -1,
		LookupHome: true, Create: convert.NewCreateRequest(cfg)}
	umask := uint32(0o022)
	req.Umask = &umask

	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	req.TraceSteps = true
	tr := &stepTrace{what: "create", start: time.Now()}
	proc, report, startW, err := createInit(t, helper, req, [3]*os.File{nil, outW, outW}, tr)
	outW.Close()
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	// Created: the program waits for its start.
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(proc.Pid) + "/comm"); strings.TrimSpace(string(b)) != "runv-exec" {
		t.Errorf("the created init runs %q before its start", b)
	}
	if _, err := startW.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	if err := awaitExec(report, "/bin/sh"); err != nil {
		t.Fatalf("start: %v", err)
	}
	out, _ := io.ReadAll(outR)
	ws, err := proc.wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("container output:\n%s", out)
	if ws.ExitStatus() != 0 {
		t.Errorf("exit %d", ws.ExitStatus())
	}
	for _, want := range []string{"pid=1\n", "engine-test\n", "null=1:3\n", "ptmx=pts/ptmx fd=/proc/self/fd\n", "root-ro\n", "tmp-ro\n",
		"hello from the host\n", "sys-ro\n", "timer_list=0\n", "inner-mounted\n", "umask=0022 home=/root-home tmpmode=1777\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the container's output lacks %q", want)
		}
	}
	for _, step := range []string{"init: mounts", "init: /dev", "init: pivot_root", "init: process set up"} {
		if !strings.Contains(tr.String(), step) {
			t.Errorf("the trace %q lacks the init's step %q", tr, step)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "inner")); err == nil {
		t.Error("a mount through a symlink made its mountpoint outside the rootfs")
	}
	if _, err := os.Stat(filepath.Join(rootfs, "outside", "inner")); err != nil {
		t.Errorf("the mountpoint under the escaping symlink is not inside the rootfs: %v", err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "etc", "hello")); err != nil {
		t.Errorf("the bind of a file got no file mountpoint: %v", err)
	}
}

// TestCreateHelperReportsWhatFailed: a container that cannot be made is an error of the
// create, naming the step; nothing of it runs.
func TestCreateHelperReportsWhatFailed(t *testing.T) {
	helper := buildExecHelper(t)
	for _, tc := range []struct {
		name   string
		change func(*configs.Config, *convert.ExecRequest)
		want   string
	}{
		{"missing program", func(_ *configs.Config, r *convert.ExecRequest) { r.Args = []string{"/bin/nothing"} }, `exec: "/bin/nothing": stat /bin/nothing: no such file or directory`},
		{"proc on a file", func(c *configs.Config, _ *convert.ExecRequest) { c.Mounts[0].Destination = "/bin/sh" }, "filesystem proc must be mounted on ordinary directory"},
		{"bind of a missing source", func(c *configs.Config, _ *convert.ExecRequest) {
			c.Mounts = append(c.Mounts, &configs.Mount{Source: "/nonexistent", Destination: "/x", Device: "bind", Flags: unix.MS_BIND})
		}, "stat the bind source /nonexistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rootfs := busyboxRootfs(t, t.TempDir())
			cfg := &configs.Config{Rootfs: rootfs, Namespaces: configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}},
				Mounts:  []*configs.Mount{{Source: "proc", Destination: "/proc", Device: "proc"}, {Source: "tmpfs", Destination: "/dev", Device: "tmpfs"}},
				Devices: []*config.Device{{Path: "/dev/null", Rule: config.Rule{Type: config.CharDevice, Major: 1, Minor: 3}, FileMode: 0o666}}}
			req := &convert.ExecRequest{Args: []string{"/bin/sh", "-c", "true"}, Env: []string{"PATH=/bin"}, Cwd: "/", ConsoleFD: -1}
			tc.change(cfg, req)
			req.Create = convert.NewCreateRequest(cfg)
			proc, _, _, err := createInit(t, helper, req, [3]*os.File{}, nil)
			if err == nil {
				proc.Kill()
				proc.wait()
				t.Fatal("created")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestCreateHelperExecFailsAfterStart: a program that the lookup finds but the kernel
// cannot run fails after the start, as with libcontainer: the start succeeds, the init
// prints the error on the program's stderr and exits 255.
func TestCreateHelperExecFailsAfterStart(t *testing.T) {
	helper := buildExecHelper(t)
	rootfs := busyboxRootfs(t, t.TempDir())
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "garbage"), []byte("\x00\x01not a program"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := &configs.Config{Rootfs: rootfs, Namespaces: configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}},
		Mounts: []*configs.Mount{{Source: "proc", Destination: "/proc", Device: "proc"}}}
	req := &convert.ExecRequest{Args: []string{"garbage"}, Env: []string{"PATH=/bin"}, Cwd: "/", ConsoleFD: -1, Create: convert.NewCreateRequest(cfg)}
	req.Create.SetupDev = false // the rootfs's own /dev, empty: nothing reopens /dev/null
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer errR.Close()
	proc, report, startW, err := createInit(t, helper, req, [3]*os.File{nil, nil, errW}, nil)
	errW.Close()
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	startW.Write([]byte{0})
	if err := awaitExec(report, "garbage"); err != nil {
		t.Errorf("start: %v (libcontainer's start succeeds; the exec fails after it)", err)
	}
	stderr, _ := io.ReadAll(errR)
	ws, err := proc.wait()
	if err != nil {
		t.Fatal(err)
	}
	if ws.ExitStatus() != 255 || string(stderr) != "exec /bin/garbage: exec format error\n" {
		t.Errorf("exit %d, stderr %q; want 255 and libcontainer's words", ws.ExitStatus(), stderr)
	}
}

// TestCreateHelperCreatedInitEndsOnTERM: `kill TERM` of a created container ends it, as it
// ends libcontainer's (a Go program): the init of its own PID namespace exits 2 (the kernel
// spares it the default action), one in a shared PID namespace dies of the signal.
func TestCreateHelperCreatedInitEndsOnTERM(t *testing.T) {
	helper := buildExecHelper(t)
	for _, tc := range []struct {
		name       string
		namespaces configs.Namespaces
		exit       int
		signal     syscall.Signal
	}{
		{"own PID namespace", configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}}, 2, 0},
		{"shared PID namespace", configs.Namespaces{{Type: configs.NEWNS}}, -1, syscall.SIGTERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rootfs := busyboxRootfs(t, t.TempDir())
			cfg := &configs.Config{Rootfs: rootfs, Namespaces: tc.namespaces,
				Mounts: []*configs.Mount{{Source: "proc", Destination: "/proc", Device: "proc"}}}
			req := &convert.ExecRequest{Args: []string{"/bin/sh", "-c", "true"}, Env: []string{"PATH=/bin"}, Cwd: "/", ConsoleFD: -1,
				Create: convert.NewCreateRequest(cfg)}
			req.Create.SetupDev = false
			proc, _, _, err := createInit(t, helper, req, [3]*os.File{}, nil)
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if err := proc.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			type waited struct {
				ws  syscall.WaitStatus
				err error
			}
			done := make(chan waited, 1)
			go func() {
				ws, err := proc.wait()
				done <- waited{ws, err}
			}()
			var ws syscall.WaitStatus
			select {
			case w := <-done:
				if w.err != nil {
					t.Fatal(w.err)
				}
				ws = w.ws
			case <-time.After(10 * time.Second):
				proc.Kill()
				<-done
				t.Fatal("the created init ignored SIGTERM (still there 10 s later)")
			}
			if ws.ExitStatus() != tc.exit || (tc.signal != 0 && ws.Signal() != tc.signal) {
				t.Errorf("the created init ended with %s; want exit %d, signal %v", waitStatusText(ws), tc.exit, tc.signal)
			}
		})
	}
}
