//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
)

// A `runv run` starts its pod daemon as it starts itself (cmd/runv/prefork.go): the pod's
// daemon is that process (--preforked on its command line), unless RUNV_NO_PREFORK is set;
// one the run did not use (the container joined a pod, or could not be created) is gone
// when run returns, and either way the pod works, the daemon goes by runv's name and
// nothing is left after delete.
func TestRunStartsItsPodDaemonAtOnce(t *testing.T) {
	for _, tt := range []struct {
		name      string
		noPrefork string
		preforked bool
	}{
		{name: "default", preforked: true},
		{name: "RUNV_NO_PREFORK=1", noPrefork: "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("RUNV_NO_PREFORK", tt.noPrefork)
			stateRoot := shortRoot(t)
			// A run that fails leaves no process behind, at once.
			if r := runvIn(t, stateRoot, nil, "run", "--bundle", filepath.Join(t.TempDir(), "missing"), newID(t)); r.code == 0 {
				t.Fatalf("run of a missing bundle: %s", r)
			}
			if left := processesNaming(stateRoot); len(left) > 0 {
				t.Fatalf("a failed run left %v", left)
			}
			sandbox := newID(t)
			if r := runvIn(t, stateRoot, nil, "run", "--detach", "--bundle", newBundle(t, "sleep", "1000"), sandbox); r.code != 0 {
				t.Fatalf("run -d: %s", r)
			}
			waitStatus(t, stateRoot, sandbox, "running")
			// A member of the sandbox's pod: its run needs no daemon of its own.
			member := newID(t)
			b := newBundleWith(t, func(s *specs.Spec) {
				s.Annotations = map[string]string{"io.kubernetes.cri.sandbox-id": sandbox}
			}, "true")
			if r := runvIn(t, stateRoot, nil, "run", "--bundle", b, member); r.code != 0 {
				t.Fatalf("run of a member of %s: %s", sandbox, r)
			}
			daemons := findPids(stateRoot, "--solo-namespaced")
			if len(daemons) != 1 {
				t.Fatalf("want one pod daemon under %s, found %v", stateRoot, daemons)
			}
			cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(daemons[0]), "cmdline"))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(string(cmdline), "\x00--preforked\x00"); got != tt.preforked {
				t.Errorf("pod daemon %q: preforked %v, want %v", strings.ReplaceAll(string(cmdline), "\x00", " "), got, tt.preforked)
			}
			// ps, top and pgrep show it by runv's name however it was started (the kernel
			// keeps 15 bytes of it).
			comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(daemons[0]), "comm"))
			if err != nil {
				t.Fatal(err)
			}
			want := filepath.Base(runvBinary)
			if len(want) > 15 {
				want = want[:15]
			}
			if got := strings.TrimSpace(string(comm)); got != want {
				t.Errorf("pod daemon %d is named %q in ps, want %q", daemons[0], got, want)
			}
			if r := runvIn(t, stateRoot, nil, "delete", "--force", sandbox); r.code != 0 {
				t.Fatalf("delete: %s", r)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}
