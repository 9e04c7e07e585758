//go:build integration

package integration

import (
	"strings"
	"testing"
)

// step is one runv invocation and what a user sees: exit code and a phrase of stderr.
type step struct {
	args       []string // {{id}} is replaced by the container id
	wantCode   int
	wantStderr string // "" means success is expected with any stderr
}

func runSteps(t *testing.T, stateRoot, id string, steps []step) {
	t.Helper()
	for _, s := range steps {
		args := make([]string, len(s.args))
		for i, a := range s.args {
			args[i] = strings.ReplaceAll(a, "{{id}}", id)
		}
		r := runvIn(t, stateRoot, nil, args...)
		if r.code != s.wantCode || !strings.Contains(r.stderr, s.wantStderr) {
			t.Errorf("runv %s: want exit %d and stderr with %q, got %s", strings.Join(args, " "), s.wantCode, s.wantStderr, r)
		}
	}
}

// Operations the container's state forbids fail as runc's do: exit 1 (exec: 255), runc's
// message, the container named, and the container unharmed.
func TestWrongStateMessages(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))

	runSteps(t, stateRoot, id, []step{
		{[]string{"start", "{{id}}"}, 1, "cannot start an already running container"},
		{[]string{"resume", "{{id}}"}, 1, "container not paused"},
		{[]string{"delete", "{{id}}"}, 1, "that is not stopped: running"},
		{[]string{"pause", "{{id}}"}, 0, ""},
	})
	if st := stateOf(t, stateRoot, id); st.Status != "paused" {
		t.Fatalf("after pause the container is %q, want paused", st.Status)
	}
	runSteps(t, stateRoot, id, []step{
		{[]string{"pause", "{{id}}"}, 1, "container not running"},
		{[]string{"start", "{{id}}"}, 1, "cannot start a container in the paused state"},
		{[]string{"exec", "{{id}}", "true"}, 255, "cannot exec in a paused container (use --ignore-paused to override)"},
		{[]string{"exec", "-t", "{{id}}", "true"}, 255, "cannot exec in a paused container"},
		{[]string{"exec", "--ignore-paused", "{{id}}", "true"}, 255, "even with --ignore-paused (resume it first)"},
		// As runc: the container's status is checked before the command line's process.
		{[]string{"exec", "{{id}}"}, 255, "cannot exec in a paused container"},
		{[]string{"delete", "{{id}}"}, 1, "that is not stopped: paused"},
		{[]string{"resume", "{{id}}"}, 0, ""},
		{[]string{"exec", "{{id}}", "true"}, 0, ""},
		{[]string{"kill", "{{id}}", "KILL"}, 0, ""},
	})
	waitStatus(t, stateRoot, id, "stopped")
	runSteps(t, stateRoot, id, []step{
		{[]string{"start", "{{id}}"}, 1, "cannot start a container that has stopped"},
		{[]string{"exec", "{{id}}", "true"}, 255, "cannot exec in a stopped container"},
		{[]string{"exec", "-d", "{{id}}", "true"}, 255, "cannot exec in a stopped container"},
		{[]string{"exec", "{{id}}"}, 255, "cannot exec in a stopped container"},
		{[]string{"pause", "{{id}}"}, 1, "container not running"},
		{[]string{"resume", "{{id}}"}, 1, "container not paused"},
		{[]string{"kill", "{{id}}"}, 1, "container not running"},
		{[]string{"update", "--memory", "64m", "{{id}}"}, 1, "container not running"},
		{[]string{"events", "--stats", "{{id}}"}, 1, "is not running"},
		{[]string{"ps", "{{id}}"}, 0, ""},
		{[]string{"delete", "{{id}}"}, 0, ""},
	})
	assertEmptyRoot(t, stateRoot)
}

// Every command names an unknown container with runc's "container does not exist".
func TestUnknownContainer(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	for _, args := range [][]string{
		{"state", "nosuch"}, {"start", "nosuch"}, {"kill", "nosuch"}, {"delete", "nosuch"},
		{"pause", "nosuch"}, {"resume", "nosuch"}, {"ps", "nosuch"}, {"events", "nosuch"},
		{"update", "--memory", "1m", "nosuch"}, {"exec", "nosuch", "true"},
	} {
		r := runvIn(t, stateRoot, nil, args...)
		want := 1
		if args[0] == "exec" {
			want = 255
		}
		if r.code != want || !strings.Contains(r.stderr, "container does not exist") || !strings.Contains(r.stderr, "nosuch") {
			t.Errorf("runv %s: want exit %d and \"container does not exist\" naming nosuch, got %s", strings.Join(args, " "), want, r)
		}
	}
	assertEmptyRoot(t, stateRoot)
}

// Bad command lines are usage errors: exit 1, a message saying what is wrong.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"exec", "--bogus", "x", "true"}, "flag provided but not defined: -bogus"},
		{[]string{"exec"}, "exec needs a container id"},
		{[]string{"ps", "--format", "yaml", "x"}, "invalid format option"},
		{[]string{"ps", "x", "-ef"}, "ps options"},
		{[]string{"events", "--interval", "0s", "x"}, "duration interval must be greater than 0"},
		{[]string{"update", "--memory", "lots", "x"}, "invalid value for --memory"},
		{[]string{"kill", "x", "SIGNOPE"}, "unknown signal"},
		{[]string{"kill", "x", "99"}, "invalid signal"},
		{[]string{"pause"}, "exactly one container id"},
		{[]string{"features", "extra"}, "features takes no arguments"},
		{[]string{"checkpoint", "x"}, "checkpoint is not supported"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			stateRoot := newRoot(t)
			r := runvIn(t, stateRoot, nil, tt.args...)
			if r.code != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("want exit 1 and %q in stderr: %s", tt.want, r)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}
