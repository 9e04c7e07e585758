//go:build integration

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// recordHook is a host hook that saves its stdin (the OCI state), its args and an env
// variable to dir/<name>.
func recordHook(dir, name string) specs.Hook {
	return specs.Hook{
		Path: "/bin/sh",
		Args: []string{"sh", "-c", `cat > "$0/$1.json"; echo "$HOOK_VAR $1" > "$0/$1.env"`, dir, name},
		Env:  []string{"HOOK_VAR=from-env"},
	}
}

func readHookState(t *testing.T, dir, name string) specs.State {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name+".json"))
	if err != nil {
		t.Fatalf("hook %s did not run: %v", name, err)
	}
	var st specs.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("hook %s got no OCI state on stdin: %v: %q", name, err, b)
	}
	env, _ := os.ReadFile(filepath.Join(dir, name+".env"))
	if got := strings.TrimSpace(string(env)); got != "from-env "+name {
		t.Fatalf("hook %s saw env and args %q, want %q", name, got, "from-env "+name)
	}
	return st
}

// Hooks run on the host at runc's points of the lifecycle, with the state on stdin and their
// args and env.
func TestHooksRunOnTheHost(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	dir := t.TempDir()
	b := newBundleWith(t, func(s *specs.Spec) {
		s.Hooks = &specs.Hooks{
			Prestart:        []specs.Hook{recordHook(dir, "prestart")},
			CreateRuntime:   []specs.Hook{recordHook(dir, "createRuntime")},
			CreateContainer: []specs.Hook{recordHook(dir, "createContainer")},
			Poststart:       []specs.Hook{recordHook(dir, "poststart")},
			Poststop:        []specs.Hook{recordHook(dir, "poststop")},
		}
		s.Annotations = map[string]string{"org.example.key": "value"}
	}, "sleep", "1000")
	id := newID(t)
	mustRunv(t, stateRoot, "create", "--bundle", b, id)
	pid := stateOf(t, stateRoot, id).Pid
	for _, name := range []string{"prestart", "createRuntime"} {
		st := readHookState(t, dir, name)
		if st.ID != id || st.Status != "creating" || st.Pid != pid || st.Bundle != b || st.Annotations["org.example.key"] != "value" {
			t.Fatalf("%s hook state %+v, want id %s, status creating, pid %d, bundle %s and the annotations", name, st, id, pid, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "poststart.json")); err == nil {
		t.Fatal("poststart ran at create")
	}
	if _, err := os.Stat(filepath.Join(dir, "createContainer.json")); err == nil {
		t.Fatal("a createContainer hook ran on the host; it belongs in the container's namespaces")
	}

	mustRunv(t, stateRoot, "start", id)
	if st := readHookState(t, dir, "poststart"); st.Status != "running" || st.Pid != pid {
		t.Fatalf("poststart hook state %+v, want running with pid %d", st, pid)
	}
	if _, err := os.Stat(filepath.Join(dir, "poststop.json")); err == nil {
		t.Fatal("poststop ran before delete")
	}
	mustRunv(t, stateRoot, "delete", "--force", id)
	if st := readHookState(t, dir, "poststop"); st.Status != "stopped" || st.Pid != 0 {
		t.Fatalf("poststop hook state %+v, want stopped without a pid", st)
	}
	assertEmptyRoot(t, stateRoot)
}

// A failing or hanging prestart/createRuntime hook fails create and leaves nothing behind;
// failing poststart/poststop hooks are warnings.
func TestHookFailures(t *testing.T) {
	t.Parallel()
	fail := specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", "echo hook-said-no >&2; exit 3"}}
	timeout := 1
	hang := specs.Hook{Path: "/bin/sleep", Args: []string{"sleep", "30"}, Timeout: &timeout}
	tests := []struct {
		name     string
		hooks    specs.Hooks
		wantCode int
		want     []string
	}{
		{"prestart fails", specs.Hooks{Prestart: []specs.Hook{fail}}, 1, []string{"prestart hook #0", "hook-said-no", "exit status 3"}},
		{"createRuntime times out", specs.Hooks{CreateRuntime: []specs.Hook{hang}}, 1, []string{"createRuntime hook #0", "timeout of 1s"}},
		{"relative hook path", specs.Hooks{Prestart: []specs.Hook{{Path: "bin/true"}}}, 1, []string{"hooks.prestart[0].path", "absolute"}},
		{"poststart and poststop fail", specs.Hooks{Poststart: []specs.Hook{fail}, Poststop: []specs.Hook{fail}}, 0, []string{"poststart", "hook-said-no"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := newRoot(t)
			b := newBundleWith(t, func(s *specs.Spec) { s.Hooks = &tt.hooks }, "true")
			start := time.Now()
			r := runvIn(t, stateRoot, nil, "run", "--bundle", b, newID(t))
			if r.code != tt.wantCode {
				t.Fatalf("run: exit %d, want %d: %s", r.code, tt.wantCode, r)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not mention %q: %s", w, r)
				}
			}
			if took := time.Since(start); took > 20*time.Second {
				t.Errorf("took %s", took)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}
