//go:build integration

package integration

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func withTerminal(s *specs.Spec) { s.Process.Terminal = true }

// sizeRe matches what `echo S=$(stty size)` prints (and not the echo of the command).
var sizeRe = regexp.MustCompile(`S=(\d+ \d+)`)

// pollSize types `echo S=$(stty size)` into a terminal until the shell reports want: a resize
// travels asynchronously into the VM (SIGWINCH → ResizePty → WINSIZE), and no event says
// when it has landed.
func pollSize(t *testing.T, master *os.File, out *syncBuffer, want string) {
	t.Helper()
	re := regexp.MustCompile(`S=` + want)
	deadline := time.Now().Add(30 * time.Second)
	for !re.MatchString(out.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal never reported size %q; output %q", want, out.String())
		}
		if _, err := master.Write([]byte("echo S=$(stty size)\n")); err != nil {
			t.Fatalf("type into the terminal: %v", err)
		}
		select {
		case <-out.changed:
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// create --console-socket: the master arrives over the socket as runc sends it; the process
// sees a terminal of the size set on the master, and follows later resizes of the master.
func TestConsoleSocketTerminal(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	b := newBundleWith(t, withTerminal, "sh")
	id := newID(t)
	sock, masters := consoleSocket(t)
	pidFile := t.TempDir() + "/pid"
	mustRunv(t, stateRoot, "create", "--console-socket", sock, "--pid-file", pidFile, "--bundle", b, id)
	master := receiveMaster(t, masters)
	out := readTerminal(master)
	setSize(t, master, 40, 120)
	mustRunv(t, stateRoot, "start", id)

	if _, err := master.Write([]byte("[ -t 0 ] && [ -t 1 ] && echo TTY=yes\n")); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`TTY=yes`), 30*time.Second)
	pollSize(t, master, out, "40 120")

	setSize(t, master, 50, 132)
	pollSize(t, master, out, "50 132")

	master.Write([]byte("exit 7\n"))
	waitStatus(t, stateRoot, id, "stopped")
	waitGone(t, readPid(t, pidFile), 15*time.Second)
	mustRunv(t, stateRoot, "delete", id)
	assertEmptyRoot(t, stateRoot)
}

// run in the foreground with a terminal on stdin: runv drives the container's terminal from
// it, in raw mode, follows its resizes (runv is the terminal's foreground process, so it
// gets SIGWINCH), exits with the process's code and restores the terminal.
func TestRunForegroundTerminal(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	b := newBundleWith(t, withTerminal, "sh", "-c", `[ -t 0 ] && [ -t 1 ] && echo TTY=yes; while read l; do [ "$l" = q ] && exit 5; echo S=$(stty size); done`)
	master, slave := openPty(t)
	setSize(t, master, 33, 99)
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	out := readTerminal(master)

	full := []string{"--root", stateRoot, "--kernel", kernel, "--initrd", initrd, "run", "--bundle", b, newID(t)}
	cmd := exec.Command(runvBinary, full...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// The terminal is runv's controlling terminal, as in a shell: it gets SIGWINCH.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	out.waitFor(t, regexp.MustCompile(`TTY=yes`), 60*time.Second)
	raw, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Lflag&(unix.ICANON|unix.ECHO) != 0 {
		t.Errorf("the user's terminal is not in raw mode while the container runs (lflag %#x)", raw.Lflag)
	}
	pollSize(t, master, out, "33 99")
	setSize(t, master, 45, 101)
	pollSize(t, master, out, "45 101")
	master.Write([]byte("q\n"))

	select {
	case err := <-done:
		var code int
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != 5 {
			t.Fatalf("runv run exited %d, want the container's 5; terminal output %q", code, out.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("runv run did not return; terminal output %q", out.String())
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("the terminal was not restored: before %+v, after %+v", *before, *after)
	}
	assertEmptyRoot(t, stateRoot)
}

// exec -t in the foreground and exec -t -d --console-socket.
func TestExecTerminal(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))

	t.Run("foreground", func(t *testing.T) {
		master, slave := openPty(t)
		setSize(t, master, 21, 77)
		out := readTerminal(master)
		full := []string{"--root", stateRoot, "--kernel", kernel, "--initrd", initrd, "exec", "-t", id, "sh", "-c", `[ -t 1 ] && echo TTY=yes; echo S=$(stty size); exit 3`}
		cmd := exec.Command(runvBinary, full...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Fatalf("runv exec -t: %v, want exit status 3; terminal output %q", err, out.String())
		}
		out.waitFor(t, regexp.MustCompile(`TTY=yes`), 10*time.Second)
		if got := out.waitFor(t, sizeRe, 10*time.Second); got[1] != "21 77" {
			t.Fatalf("stty size in exec -t = %q, want the terminal's 21 77", got[1])
		}
	})

	t.Run("detached with console socket", func(t *testing.T) {
		sock, masters := consoleSocket(t)
		pidFile := t.TempDir() + "/pid"
		mustRunv(t, stateRoot, "exec", "-t", "-d", "--console-socket", sock, "--pid-file", pidFile, id, "sh")
		master := receiveMaster(t, masters)
		out := readTerminal(master)
		setSize(t, master, 25, 81)
		pollSize(t, master, out, "25 81")
		shim := readPid(t, pidFile)
		if pids := psJSON(t, stateRoot, id); !containsInt(pids, shim) {
			t.Fatalf("ps --format json %v does not list the exec's shim %d", pids, shim)
		}
		master.Write([]byte("exit\n"))
		waitGone(t, shim, 30*time.Second)
	})
	deleteAndCheck(t, stateRoot, id)
}

// runc's rules for terminals and console sockets, checked before anything is created.
func TestTerminalUsageErrors(t *testing.T) {
	t.Parallel()
	term := newBundleWith(t, withTerminal, "sh")
	plain := newBundle(t, "true")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"create, terminal, no socket", []string{"create", "--bundle", term, "x1"}, "cannot allocate tty if runv will detach without setting console socket"},
		{"run -d, terminal, no socket", []string{"run", "-d", "--bundle", term, "x2"}, "cannot allocate tty"},
		{"run in the foreground with a socket", []string{"run", "--console-socket", "/tmp/nosuch.sock", "--bundle", term, "x3"}, "cannot use console socket if runv will not detach or allocate tty"},
		{"create, no terminal, with a socket", []string{"create", "--console-socket", "/tmp/nosuch.sock", "--bundle", plain, "x4"}, "cannot use console socket"},
		{"socket that does not exist", []string{"create", "--console-socket", "/nonexistent/sock", "--bundle", term, "x5"}, "/nonexistent/sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := newRoot(t)
			r := runvIn(t, stateRoot, nil, tt.args...)
			if r.code != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("want exit 1 and %q: %s", tt.want, r)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
