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
			sandboxBundle := t.TempDir()
			sp, err := bundle.Make(sandboxBundle, "sleep", "1000")
			if err != nil {
				t.Fatal(err)
			}
			sp.Hostname = "podhost"
			if err := bundle.WriteSpec(sandboxBundle, sp); err != nil {
				t.Fatal(err)
			}
			sandbox := newID(t)
			if r := runvIn(t, stateRoot, nil, "run", "-d", "--bundle", sandboxBundle, sandbox); r.code != 0 {
				t.Fatalf("run -d sandbox: %s", r)
			}
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
