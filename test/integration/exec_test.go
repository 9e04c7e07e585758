//go:build integration

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// exec in the foreground: the process's stdio are runv's, its exit code is runv's, and the
// options shape the process as runc's do.
func TestExecForeground(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))

	processFile := filepath.Join(t.TempDir(), "process.json")
	p := specs.Process{Args: []string{"sh", "-c", "echo from-process-json $V; exit 4"}, Env: []string{"V=v1", "PATH=/bin:/usr/bin"}, Cwd: "/"}
	b, _ := json.Marshal(p)
	os.WriteFile(processFile, b, 0o644)

	tests := []struct {
		name       string
		stdin      []byte
		opts, cmd  []string // runv exec <opts> <id> <cmd>
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"exit code", nil, nil, []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, 3, "out\n", "err"},
		{"stdin", []byte("data\n"), nil, []string{"cat"}, 0, "data\n", ""},
		{"env cwd user", nil, []string{"-e", "FOO=a,b", "--env", "BAR=c", "--cwd", "/tmp", "-u", "1000:1001", "-g", "7"},
			[]string{"sh", "-c", `echo "$FOO $BAR $(pwd) $(id -u):$(id -g) $(id -G)"`}, 0, "a,b c /tmp 1000:1001 1001 7\n", ""},
		{"process.json", nil, []string{"--process", processFile}, nil, 4, "from-process-json v1\n", ""},
		{"config.json env is inherited", nil, nil, []string{"sh", "-c", "echo $PATH"}, 0, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", ""},
		{"no-new-privs and cap accepted", nil, []string{"--no-new-privs", "--cap", "CAP_SYS_ADMIN"}, []string{"true"}, 0, "", ""},
		{"missing executable", nil, nil, []string{"/no/such/program"}, 127, "", "/no/such/program"},
		{"no command", nil, nil, nil, 255, "", "exec args cannot be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append(append(append([]string{"exec"}, tt.opts...), id), tt.cmd...)
			r := runvIn(t, stateRoot, tt.stdin, args...)
			if r.code != tt.wantCode {
				t.Fatalf("exit code %d, want %d: %s", r.code, tt.wantCode, r)
			}
			if tt.wantStdout != "" && r.stdout != tt.wantStdout {
				t.Fatalf("stdout %q, want %q: %s", r.stdout, tt.wantStdout, r)
			}
			if tt.wantStderr != "" && !strings.Contains(r.stderr, tt.wantStderr) {
				t.Fatalf("stderr does not mention %q: %s", tt.wantStderr, r)
			}
		})
	}
	t.Cleanup(func() { deleteAndCheck(t, stateRoot, id) })
}

// A foreground exec stands in for its process: a signal sent to runv reaches the process,
// and runv exits with the process's code.
func TestExecForegroundForwardsSignals(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))
	bg := startRunv(t, stateRoot, nil, "exec", id, "sh", "-c", `trap "echo got-term; exit 42" TERM; echo ready; while :; do sleep 0.1; done`)
	bg.stdout.waitFor(t, regexp.MustCompile(`ready`), 60*time.Second)
	if pids := psJSON(t, stateRoot, id); !containsInt(pids, bg.cmd.Process.Pid) {
		t.Errorf("ps --format json %v does not list the foreground exec %d", pids, bg.cmd.Process.Pid)
	}
	bg.cmd.Process.Signal(syscall.SIGTERM)
	r := bg.wait(t, 60*time.Second)
	if r.code != 42 || !strings.Contains(r.stdout, "got-term") {
		t.Fatalf("runv exec after SIGTERM: %s, want exit 42 and the trap's output", r)
	}
	deleteAndCheck(t, stateRoot, id)
}

// exec -d: a shim stands in for the process; its pid goes to --pid-file and ps; signals sent
// to it reach the process; it exits when the process does.
func TestExecDetached(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))
	initShim := stateOf(t, stateRoot, id).Pid

	var shims []int
	for i := 0; i < 2; i++ {
		pidFile := filepath.Join(t.TempDir(), "pid")
		mustRunv(t, stateRoot, "exec", "-d", "--pid-file", pidFile, id, "sleep", strconv.Itoa(900+i))
		shim := readPid(t, pidFile)
		if !alive(shim) {
			t.Fatalf("exec shim %d is not running", shim)
		}
		shims = append(shims, shim)
	}
	if shims[0] == shims[1] {
		t.Fatalf("two execs got the same shim pid %d", shims[0])
	}
	if got, want := psJSON(t, stateRoot, id), []int{initShim, shims[0], shims[1]}; !sameInts(got, want) {
		t.Fatalf("ps --format json = %v, want the init shim and the exec shims %v", got, want)
	}
	table := mustRunv(t, stateRoot, "ps", id).stdout
	for _, want := range []string{"PID", "CMD", "sleep 1000", "sleep 900", "sleep 901"} {
		if !strings.Contains(table, want) {
			t.Fatalf("ps table does not show %q:\n%s", want, table)
		}
	}

	syscall.Kill(shims[0], syscall.SIGTERM) // forwarded: sleep 900 dies
	waitGone(t, shims[0], 30*time.Second)
	if got := psJSON(t, stateRoot, id); containsInt(got, shims[0]) {
		t.Fatalf("ps --format json = %v still lists the exited exec's shim %d", got, shims[0])
	}
	if strings.Contains(mustRunv(t, stateRoot, "ps", id).stdout, "sleep 900") {
		t.Fatal("ps table still shows the killed exec")
	}
	deleteAndCheck(t, stateRoot, id)
	if alive(shims[1]) {
		t.Fatalf("exec shim %d survived delete --force", shims[1])
	}
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[int]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}
