package agent

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/runv-project/runv/api/agentproto"
)

func TestExitStatus(t *testing.T) {
	// WaitStatus encoding: exit code in bits 8-15, terminating signal in bits 0-6.
	if code, sig := exitStatus(syscall.WaitStatus(3 << 8)); code != 3 || sig != 0 {
		t.Errorf("exit 3 → %d/%d", code, sig)
	}
	if code, sig := exitStatus(syscall.WaitStatus(syscall.SIGKILL)); code != 137 || sig != 9 {
		t.Errorf("SIGKILL → %d/%d, want 137/9", code, sig)
	}
	if code, sig := exitStatus(syscall.WaitStatus(syscall.SIGTERM)); code != 143 || sig != 15 {
		t.Errorf("SIGTERM → %d/%d, want 143/15", code, sig)
	}
}

func TestProcessExitFromRealWait(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exit 7")
	err := cmd.Run()
	if _, exited := err.(*exec.ExitError); !exited {
		t.Fatal(err)
	}
	e := processExit("c", "p", cmd.ProcessState.Sys().(syscall.WaitStatus), nil)
	if e.ExitCode != 7 || e.Signal != 0 || e.Error != "" || e.Container != "c" || e.Process != "p" {
		t.Fatalf("got %+v", e)
	}
	cmd = exec.Command("/bin/sh", "-c", "kill -KILL $$")
	err = cmd.Run()
	if _, exited := err.(*exec.ExitError); !exited {
		t.Fatal(err)
	}
	if e := processExit("c", "p", cmd.ProcessState.Sys().(syscall.WaitStatus), nil); e.ExitCode != 137 || e.Signal != 9 {
		t.Fatalf("got %+v, want 137/9", e)
	}
	if e := processExit("c", "p", 0, errors.New("wait: no child processes")); e.ExitCode != 255 || !strings.Contains(e.Error, "no child") {
		t.Fatalf("lost status: got %+v", e)
	}
}

func TestClassifyStartError(t *testing.T) {
	const pre = "unable to start container process: error during container init: "
	for _, tc := range []struct {
		msg  string
		code int // 0: not classified
	}{
		{pre + `exec: "nosuch": executable file not found in $PATH`, 127},
		{pre + `exec: "/bin/nosuch": stat /bin/nosuch: no such file or directory`, 127},
		{pre + `exec: "/etc/passwd": permission denied`, 126},
		{pre + `exec: "/tmp": is a directory`, 126},
		{pre + `exec: "sp ace\"q": executable file not found in $PATH; runc init error(s): foo`, 127},
		{pre + `error mounting "proc" to rootfs at "/proc": no such file or directory`, 0},
		{"unable to create new parent process: permission denied", 0},
		{"exec fifo: no such file or directory", 0},
	} {
		code, err, ok := classifyStartError(errors.New(tc.msg))
		if tc.code == 0 {
			if ok {
				t.Errorf("%q classified as %d (%v), want unclassified", tc.msg, code, err)
			}
			continue
		}
		if !ok || code != tc.code {
			t.Errorf("%q → %d ok=%v, want %d", tc.msg, code, ok, tc.code)
			continue
		}
		if kindOf(err) != agentproto.KindNotExecutable {
			t.Errorf("%q: kind %q, want %q", tc.msg, kindOf(err), agentproto.KindNotExecutable)
		}
		want := ": executable file not found"
		if code == 126 {
			want = ": permission denied"
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q → message %q lacks %q", tc.msg, err, want)
		}
	}
	if _, _, ok := classifyStartError(nil); ok {
		t.Error("nil classified")
	}
}
