package agent

import (
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A child the agent starts itself is signalled and waited for through its pidfd: the
// status it ended with, and no signal once it is reaped.
func TestChildProcessSignalWait(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The shell writes to its stdout (the pipe) once it runs, then waits for the signal.
	proc, err := startChild("/bin/sh", []string{"sh", "-c", "echo up; exec sleep 60"}, []*os.File{nil, w, nil}, &syscall.SysProcAttr{})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 3)
	if _, err := io.ReadFull(r, line); err != nil || string(line) != "up\n" {
		_ = proc.Kill()
		_, _ = proc.wait()
		t.Fatalf("the child's stdout: %q, %v", line, err)
	}
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	ws, err := proc.wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM || waitStatusText(ws) != "signal: terminated" {
		t.Errorf("ended with %s, want signal: terminated", waitStatusText(ws))
	}
	if err := proc.Signal(syscall.SIGKILL); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("a signal after the reap: %v, want os.ErrProcessDone", err)
	}
	if _, err := proc.wait(); err == nil {
		t.Error("a second wait succeeded")
	}
}

// findChild holds a child someone else started (the helper's fork, in the agent): its exit
// status comes through the pidfd.
func TestFindChildWaitsForItsExit(t *testing.T) {
	started, err := startChild("/bin/sh", []string{"sh", "-c", "exit 7"}, nil, &syscall.SysProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	found, err := findChild(started.Pid)
	if err != nil {
		_, _ = started.wait()
		t.Fatal(err)
	}
	ws, err := found.wait()
	if err != nil || !ws.Exited() || ws.ExitStatus() != 7 || waitStatusText(ws) != "exit status 7" {
		t.Errorf("found child: %s, %v; want exit status 7", waitStatusText(ws), err)
	}
	closePidfd(t, started)
}

func closePidfd(t *testing.T, p *childProcess) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := syscall.Close(p.pidfd); err != nil {
		t.Errorf("close the pidfd: %v", err)
	}
	p.pidfd = -1
}

// A start that fails reads as os.StartProcess's.
func TestStartChildErrorWords(t *testing.T) {
	_, err := startChild("/nonexistent/runv-exec", []string{"runv-exec"}, nil, &syscall.SysProcAttr{})
	if err == nil || err.Error() != "fork/exec /nonexistent/runv-exec: no such file or directory" || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("start of a missing program: %v", err)
	}
}

// The report pipe's reader gives up at its deadline with the words of a read deadline's
// timeout, and reads what comes before it, EOF included.
func TestReportReaderDeadline(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	start := time.Now()
	_, err = newReportReader(r, 100*time.Millisecond).Read(make([]byte, 1))
	if took := time.Since(start); took < 100*time.Millisecond || took > 5*time.Second {
		t.Errorf("the read gave up after %v, want 100 ms", took)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.HasSuffix(err.Error(), ": i/o timeout") {
		t.Errorf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}

	rd := newReportReader(r, 10*time.Second)
	if _, err := w.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got, err := io.ReadAll(rd)
	if err != nil || string(got) != "ok" {
		t.Errorf("read %q, %v; want \"ok\" then EOF", got, err)
	}
}
