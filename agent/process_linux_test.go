package agent

import (
	"os"
	"strconv"
	"syscall"
	"testing"
)

// exitUnreaped gives the exit Wait would give, and leaves the process a zombie until the
// caller reaps it: exit codes, and signals.
func TestExitUnreapedIsWaitsExit(t *testing.T) {
	for _, script := range []string{"exit 7", "exit 0", "kill -KILL $$", "kill -TERM $$"} {
		proc, err := startChild("/bin/sh", []string{"sh", "-c", script}, nil, &syscall.SysProcAttr{})
		if err != nil {
			t.Fatal(err)
		}
		p := &process{id: "p", ctr: &container{id: "c"}, handle: proc, pid: proc.Pid}
		got, ok := p.exitUnreaped()
		if !ok {
			_, _ = proc.wait()
			t.Fatalf("%q: the status of the agent's own child was not taken", script)
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(proc.Pid) + "/stat")
		if state, _, parsed := parseStat(b); err != nil || !parsed || state != 'Z' {
			t.Errorf("%q: after exitUnreaped the process is %q (%v), want a zombie", script, b, err)
		}
		ws, err := proc.wait()
		if err != nil {
			t.Fatalf("%q: reaping after exitUnreaped: %v", script, err)
		}
		if want := processExit("c", "p", ws, nil); got != want {
			t.Errorf("%q: exitUnreaped %+v, Wait %+v", script, got, want)
		}
	}
}
