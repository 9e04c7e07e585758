//go:build integration

package clients

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/runv-project/runv/test/poll"
)

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// quiet runs a command outside the test log (setup, polling, cleanup). Its error says
// "timed out" when it hung.
func quiet(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = workDir
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s", shellQuote(append([]string{name}, args...)), timeout)
	} else if err != nil {
		err = fmt.Errorf("%s: %w: %s", shellQuote(append([]string{name}, args...)), err, strings.TrimSpace(out.String()))
	}
	return out.String(), err
}

func syscallKill(pid int) { syscall.Kill(pid, syscall.SIGKILL) }

// trapScript exits 7 on SIGTERM, and says "ready" once its trap is set: a PID 1 without a
// handler ignores SIGTERM, so the signal must not come earlier.
const trapScript = "trap 'exit 7' TERM; echo ready; while :; do sleep 0.2; done"

// memoryHog grows a shell variable until the container's memory limit has it OOM-killed.
const memoryHog = "a=0123456789abcdef; while true; do a=$a$a; done"

// waitFor polls cond every 200 ms until it holds or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	return poll.Until(timeout, 200*time.Millisecond, cond)
}

// checkGuestRelease checks that a container reported the guest kernel's release.
func checkGuestRelease(x *tc, r result) {
	x.t.Helper()
	switch got := strings.TrimSpace(r.stdout); got {
	case guestRelease:
	case hostRelease:
		x.fatal(r, "uname -r gave the HOST's kernel %s: the container did not run in a runv VM (guest kernel %s)", hostRelease, guestRelease)
	default:
		x.fatal(r, "uname -r gave %q, want the guest kernel %s", got, guestRelease)
	}
}

// runInPty runs a client on a new pseudo-terminal, as from an interactive shell: stdin,
// stdout and stderr are the terminal, which is its controlling terminal. The output is what
// appeared on the terminal.
func runInPty(t *testing.T, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	return runInPtyTyping(t, timeout, "", "", name, args...)
}

// ctrTerminalScript is the process of a ctr terminal test: it says what it sees, then waits
// for a line typed on the terminal (see runInPtyTyping) and shows it.
//
// Why it waits: ctr loses the output of a process that exits too soon, by a race of its
// own. It opens its end of the output FIFO in a goroutine, and on the process's exit
// (process.Delete → cio Cancel) closes a FIFO whose open that goroutine has not yet marked
// done (containerd/fifo: the opened file is dropped unread). Under load that goroutine can
// stall after its open(2) returned (17 ms in a traced failure, ctr 1.6.20) while the shim
// writes the output into the FIFO: the terminal shows nothing, whatever the runtime. Once the
// output is on the terminal, ctr's copy runs, and the typed line then proves that input
// reaches the process through the terminal too.
const ctrTerminalScript = "[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r; read -r line; echo \"typed: $line\""

// runInPtyTyping is runInPty that, once the terminal shows after, types answer (a line
// ending in "\r", as the Enter key sends) once. With after empty it types nothing.
func runInPtyTyping(t *testing.T, timeout time.Duration, after, answer, name string, args ...string) result {
	t.Helper()
	r := result{cmdline: shellQuote(append([]string{name}, args...)) + "   (on a pty)"}
	t.Logf("$ %s", r.cmdline)
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatalf("open a pty: %v", err)
	}
	defer master.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open %s: %v", slavePath, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = workDir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	cmd.WaitDelay = 5 * time.Second
	var mu sync.Mutex
	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		typed := after == ""
		for {
			n, err := master.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			seen := !typed && strings.Contains(strings.ReplaceAll(out.String(), "\r", ""), after)
			mu.Unlock()
			if seen {
				typed = true
				if _, err := io.WriteString(master, answer); err != nil {
					t.Errorf("type %q on the terminal: %v", answer, err)
				}
			}
			if err != nil {
				return // EIO once no one holds the terminal open
			}
		}
	}()
	start := time.Now()
	err = cmd.Start()
	slave.Close()
	if err == nil {
		err = cmd.Wait()
	}
	r.took = time.Since(start)
	select {
	case <-readDone:
	case <-time.After(3 * time.Second):
	}
	mu.Lock()
	r.stdout = out.String()
	mu.Unlock()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.timedOut, r.code = true, -1
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		r.code = -1
		r.stderr = err.Error()
	}
	return r
}

// checkTerminal checks a terminal run of `[ -t 0 ] && [ -t 1 ] && echo tty-ok; uname -r`:
// the process had a terminal, and its output came through it (the terminal turned "\n" into
// "\r\n"; ctr shows "\r\r\n", with runc as with runv).
func checkTerminal(x *tc, r result) {
	x.t.Helper()
	if r.timedOut || r.code != 0 {
		x.fatal(r, "a container with a terminal failed")
	}
	x.t.Logf("terminal output: %q", r.stdout)
	if strings.ContainsRune(r.stdout, 0) {
		x.errorf(r, "a NUL byte on the terminal: nothing the container printed")
	}
	if !strings.Contains(r.stdout, "\r\n") || !strings.Contains(strings.ReplaceAll(r.stdout, "\r", ""), "tty-ok\n"+guestRelease+"\n") {
		x.fatal(r, "want \"tty-ok\" and the guest kernel %s on the terminal, with CRLF line ends", guestRelease)
	}
}

// ctrTerminal runs ctr with args (whose process is ctrTerminalScript) on a terminal, types
// a line once the process's output is there, and checks what the terminal shows.
func ctrTerminal(t *testing.T, x *tc, args ...string) {
	t.Helper()
	const typed = "hello-tty"
	r := runInPtyTyping(t, 60*time.Second, "tty-ok\n"+guestRelease+"\n", typed+"\r", "ctr", args...)
	checkTerminal(x, r)
	if !strings.Contains(strings.ReplaceAll(r.stdout, "\r", ""), "typed: "+typed+"\n") {
		x.errorf(r, "want the line typed on the terminal (%q) read by the process", typed)
	}
}

// removeCgroupParent removes the host cgroup /name (in every hierarchy) that the runtime
// made as the parent of containers' cgroups; one that still has a child cgroup is a
// container's cgroup left behind.
func removeCgroupParent(name string) (problems []string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	if fi, err := os.Stat(filepath.Join("/sys/fs/cgroup", name)); err == nil && fi.IsDir() {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", name))
	}
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if e.IsDir() {
				problems = append(problems, "container cgroup left: "+filepath.Join(d, e.Name()))
			}
		}
		os.Remove(d)
	}
	return problems
}
