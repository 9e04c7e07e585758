//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/test/bundle"
)

// Two containers of one pod share one VM and its UTS namespace; the pod's VM goes when the
// last container is deleted. A container joins by CRI annotation or by a namespace path
// pointing at the pid runv reported for a pod member.
func TestTwoContainersShareOnePod(t *testing.T) {
	tests := []struct {
		name string
		join func(sandboxID string, sandboxPid int, s *specs.Spec)
	}{
		{"by CRI sandbox annotation", func(id string, _ int, s *specs.Spec) {
			s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": id}
		}},
		{"by namespace path", func(_ string, pid int, s *specs.Spec) {
			for _, typ := range []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.IPCNamespace, specs.UTSNamespace} {
				for i := range s.Linux.Namespaces {
					if s.Linux.Namespaces[i].Type == typ {
						s.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/%s", pid, map[specs.LinuxNamespaceType]string{
							specs.NetworkNamespace: "net", specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts"}[typ])
					}
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := shortRoot(t)
			sandbox := runSandbox(t, stateRoot, "sleep", "1000")
			sst := waitStatus(t, stateRoot, sandbox, "running")

			memberBundle := t.TempDir()
			mp, err := bundle.Make(memberBundle, "hostname")
			if err != nil {
				t.Fatal(err)
			}
			mp.Hostname = ""
			tt.join(sandbox, sst.Pid, mp)
			if err := bundle.WriteSpec(memberBundle, mp); err != nil {
				t.Fatal(err)
			}
			member := newID(t)
			r := runvIn(t, stateRoot, nil, "run", "--bundle", memberBundle, member)
			if r.code != 0 {
				t.Fatalf("run member: %s", r)
			}
			if got := strings.TrimSpace(r.stdout); got != "podhost" {
				t.Fatalf("member's hostname is %q, want the pod's %q (UTS namespace not shared)", got, "podhost")
			}
			if n := len(findPids(stateRoot, "qemu-system")); n != 1 {
				t.Fatalf("%d VMs for one pod, want 1", n)
			}
			// The member is gone (run deletes it); the pod lives on with its sandbox.
			if st := stateOf(t, stateRoot, sandbox); st.Status != "running" {
				t.Fatalf("sandbox is %q after its member was deleted, want running", st.Status)
			}
			if r := runvIn(t, stateRoot, nil, "delete", "--force", sandbox); r.code != 0 {
				t.Fatalf("delete --force sandbox: %s", r)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}

func TestJoiningAnUnknownSandboxFails(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := t.TempDir()
	sp, err := bundle.Make(b, "true")
	if err != nil {
		t.Fatal(err)
	}
	sp.Annotations = map[string]string{"io.kubernetes.cri.sandbox-id": "nosuchsandbox"}
	bundle.WriteSpec(b, sp)
	r := runvIn(t, stateRoot, nil, "run", "--bundle", b, newID(t))
	if r.code == 0 || !strings.Contains(r.stderr, "nosuchsandbox") {
		t.Fatalf("joining an unknown sandbox: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}

// The pod's namespaces outlive its first container (the agent pins them): a member created
// after the sandbox's process exited still gets the pod's UTS namespace. Sharing the PID
// namespace of that exited sandbox is refused, saying why, and leaves the pod as it was.
func TestMemberJoinsAfterTheSandboxExited(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	sandbox := runSandbox(t, stateRoot, "true")
	waitStatus(t, stateRoot, sandbox, "stopped")

	member := func(args []string, sharePID bool) result {
		b := t.TempDir()
		mp, err := bundle.Make(b, args...)
		if err != nil {
			t.Fatal(err)
		}
		mp.Hostname = ""
		mp.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
		if sharePID {
			for i := range mp.Linux.Namespaces {
				if mp.Linux.Namespaces[i].Type == specs.PIDNamespace {
					mp.Linux.Namespaces[i].Path = "/proc/self/ns/pid" // any PID namespace: it asks for the pod's
				}
			}
		}
		if err := bundle.WriteSpec(b, mp); err != nil {
			t.Fatal(err)
		}
		return runvIn(t, stateRoot, nil, "run", "--bundle", b, newID(t))
	}
	r := member([]string{"hostname"}, false)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "podhost" {
		t.Fatalf("member after the sandbox exited: want hostname podhost (the pod's UTS namespace): %s", r)
	}
	r = member([]string{"true"}, true)
	if r.code == 0 || !strings.Contains(r.stderr, "PID namespace") {
		t.Fatalf("member sharing the PID namespace of an exited sandbox: want a refusal naming the PID namespace: %s", r)
	}
	if n := len(findPids(stateRoot, "qemu-system")); n != 1 {
		t.Fatalf("%d VMs for one pod, want 1", n)
	}
	if r := runvIn(t, stateRoot, nil, "delete", sandbox); r.code != 0 {
		t.Fatalf("delete sandbox: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}

// runSandbox starts, detached, a pod's sandbox with hostname "podhost" running args and
// returns its id. A test that fails half-way must not leave the pod behind: the sandbox is
// deleted with --force at cleanup (which succeeds for a container already deleted).
func runSandbox(t *testing.T, stateRoot string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	sp, err := bundle.Make(dir, args...)
	if err != nil {
		t.Fatal(err)
	}
	sp.Hostname = "podhost"
	if err := bundle.WriteSpec(dir, sp); err != nil {
		t.Fatal(err)
	}
	sandbox := newID(t)
	t.Cleanup(func() { runvIn(t, stateRoot, nil, "delete", "--force", sandbox) })
	if r := runvIn(t, stateRoot, nil, "run", "-d", "--bundle", dir, sandbox); r.code != 0 {
		t.Fatalf("run -d sandbox: %s", r)
	}
	return sandbox
}
