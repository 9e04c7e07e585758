//go:build integration

package integration

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A guest that stops answering (hung, or hostile: here QEMU itself is stopped) must not make
// `delete --force` hang: after a bounded wait for the SIGKILL it ends the pod — its daemon
// and VM — and cleans up as after a killed daemon. The pod's second container is then
// stopped, and deleted normally.
func TestForceDeleteOfAnUnresponsiveGuest(t *testing.T) {
	t.Parallel()
	r := shortRoot(t)
	sandbox := runDetached(t, r, newBundle(t, "sleep", "1000"))
	member := newID(t)
	memberBundle := newBundleWith(t, func(s *specs.Spec) {
		s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
	}, "sleep", "1000")
	mustRunv(t, r, "run", "-d", "--bundle", memberBundle, member)
	podDir := podDirOf(t, r, sandbox)
	qemu := readPid(t, filepath.Join(podDir, "vm", "qemu.pid"))
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(qemu, syscall.SIGKILL) })

	// forceKillTimeout (20 s) and the cleanup after it; far below, runv waited a minute per
	// call and then failed, leaving everything.
	res := startRunv(t, r, nil, "delete", "--force", sandbox).wait(t, 90*time.Second)
	if res.code != 0 {
		t.Fatalf("delete --force of a container whose guest is stopped: %s", res)
	}
	if !strings.Contains(res.stderr, "ending its pod") {
		t.Errorf("delete --force did not say it ended the pod: %q", res.stderr)
	}
	waitGone(t, qemu, 15*time.Second)
	if st := stateOf(t, r, member); st.Status != "stopped" {
		t.Errorf("the pod's other container is %s after its VM was ended, want stopped", st.Status)
	}
	mustRunv(t, r, "delete", member)
	assertEmptyRoot(t, r)
}
