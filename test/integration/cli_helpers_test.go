//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/test/bundle"
)

// newRoot returns a state root of the test's own, and makes sure nothing stays in it when
// the test ends early: every container left is force-deleted (the test itself still checks
// with assertEmptyRoot that its own deletes cleaned up).
func newRoot(t *testing.T) string {
	t.Helper()
	// Short: the pod's unix socket paths live under it (sun_path is 108 bytes), and
	// t.TempDir's names grow with the test's.
	dir, err := os.MkdirTemp("", "runv-it-")
	if err != nil {
		t.Fatal(err)
	}
	stateRoot := filepath.Join(dir, "root")
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Cleanup(func() {
		r := runvIn(t, stateRoot, nil, "list", "-q")
		for _, id := range strings.Fields(r.stdout) {
			runvIn(t, stateRoot, nil, "delete", "--force", id)
		}
	})
	return stateRoot
}

// newBundleWith makes a busybox bundle running args, with edit applied to its spec.
func newBundleWith(t *testing.T, edit func(*specs.Spec), args ...string) string {
	t.Helper()
	dir := t.TempDir()
	s, err := bundle.Make(dir, args...)
	if err != nil {
		t.Fatal(err)
	}
	edit(s)
	if err := bundle.WriteSpec(dir, s); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mustRunv runs runv in stateRoot and fails the test unless it exits 0.
func mustRunv(t *testing.T, stateRoot string, args ...string) result {
	t.Helper()
	r := runvIn(t, stateRoot, nil, args...)
	if r.code != 0 {
		t.Fatalf("runv %s: %s%s", strings.Join(args, " "), r, podLogTails(stateRoot))
	}
	return r
}

// podLogTailLines is how much of each pod's logs a failed command's report quotes.
const podLogTailLines = 25

// podLogTails quotes the end of every pod daemon's log and guest console under stateRoot:
// what a command that failed unexpectedly leaves to go on once the test's cleanup removed
// the pods (a rare stall, say: docs/reliability.md, "A boot whose agent answers late").
func podLogTails(stateRoot string) string {
	var b strings.Builder
	pods, _ := filepath.Glob(filepath.Join(stateRoot, "@pods", "*"))
	for _, pod := range pods {
		for _, name := range []string{"daemon.log", filepath.Join("vm", "console.log")} {
			data, err := os.ReadFile(filepath.Join(pod, name))
			if err != nil {
				continue
			}
			lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
			if len(lines) > podLogTailLines {
				lines = lines[len(lines)-podLogTailLines:]
			}
			b.WriteString("\n--- " + filepath.Join(filepath.Base(pod), name) + " (last lines):\n" + strings.Join(lines, "\n"))
		}
	}
	return b.String()
}

// runDetached starts a container running args with `run -d` and waits until it runs.
func runDetached(t *testing.T, stateRoot string, b string) string {
	t.Helper()
	id := newID(t)
	mustRunv(t, stateRoot, "run", "-d", "--bundle", b, id)
	waitStatus(t, stateRoot, id, "running")
	return id
}

// deleteAndCheck force-deletes a container and checks that the root is empty afterwards.
func deleteAndCheck(t *testing.T, stateRoot, id string) {
	t.Helper()
	mustRunv(t, stateRoot, "delete", "--force", id)
	assertEmptyRoot(t, stateRoot)
}

// background is a runv invocation running while the test goes on.
type background struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan result
}

// startRunv starts runv with pipes for stdout and stderr (stdin: the given file, or none).
func startRunv(t *testing.T, stateRoot string, stdin *os.File, args ...string) *background {
	t.Helper()
	full := append([]string{"--root", stateRoot, "--kernel", kernel, "--initrd", initrd}, args...)
	b := &background{cmd: exec.Command(runvBinary, full...), stdout: newSyncBuffer(), stderr: newSyncBuffer(), done: make(chan result, 1)}
	b.cmd.Stdin, b.cmd.Stdout, b.cmd.Stderr = stdin, b.stdout, b.stderr
	start := time.Now()
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start runv %v: %v", args, err)
	}
	go func() {
		err := b.cmd.Wait()
		r := result{stdout: b.stdout.String(), stderr: b.stderr.String(), took: time.Since(start)}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				r.code = 128 + int(ws.Signal())
			}
		}
		b.done <- r
	}()
	t.Cleanup(func() { b.cmd.Process.Kill() })
	return b
}

// wait returns the invocation's result, failing the test after timeout.
func (b *background) wait(t *testing.T, timeout time.Duration) result {
	t.Helper()
	select {
	case r := <-b.done:
		return r
	case <-time.After(timeout):
		b.cmd.Process.Kill()
		t.Fatalf("runv %v did not finish within %s; stdout %q, stderr %q", b.cmd.Args[7:], timeout, b.stdout.String(), b.stderr.String())
	}
	return result{}
}

// syncBuffer collects output and tells waiters when more arrived.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	n, err := s.buf.Write(p)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor waits until the output matches re and returns the submatches of the last match.
func (s *syncBuffer) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if m := re.FindAllStringSubmatch(s.String(), -1); m != nil {
			return m[len(m)-1]
		}
		select {
		case <-s.changed:
		case <-deadline.C:
			t.Fatalf("output never matched %q within %s; got %q", re, timeout, s.String())
		}
	}
}

// openPty opens a pty pair for a test playing the user's terminal.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

func setSize(t *testing.T, f *os.File, rows, cols uint16) {
	t.Helper()
	if err := unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatalf("set window size: %v", err)
	}
}

// readTerminal copies everything the terminal master yields into a buffer until it ends.
func readTerminal(master *os.File) *syncBuffer {
	out := newSyncBuffer()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			if n > 0 {
				out.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// consoleSocket listens where `--console-socket` sends the pty master, as containerd's
// runc shim and conmon do, and delivers the master.
func consoleSocket(t *testing.T) (path string, masters <-chan *os.File) {
	t.Helper()
	dir, err := os.MkdirTemp("", "runv-console-") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan *os.File, 1)
	go func() {
		conn, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer conn.Close()
		name := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := conn.ReadMsgUnix(name, oob)
		if err != nil {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return
		}
		ch <- os.NewFile(uintptr(fds[0]), "console-master")
	}()
	return path, ch
}

// receiveMaster waits for the pty master on a console socket.
func receiveMaster(t *testing.T, masters <-chan *os.File) *os.File {
	t.Helper()
	select {
	case m := <-masters:
		t.Cleanup(func() { m.Close() })
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no pty master arrived on the console socket")
	}
	return nil
}

// psJSON returns the host pids `runv ps --format json` reports.
func psJSON(t *testing.T, stateRoot, id string) []int {
	t.Helper()
	r := mustRunv(t, stateRoot, "ps", "--format", "json", id)
	var pids []int
	if err := json.Unmarshal([]byte(r.stdout), &pids); err != nil {
		t.Fatalf("ps --format json is not a JSON array of pids: %v: %s", err, r)
	}
	return pids
}

// waitGone waits for a host process (not our child) to exit.
func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %s", pid, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s holds %q", path, b)
	}
	return pid
}
