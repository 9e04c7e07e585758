//go:build integration

package integration

import (
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The agent keeps the device filter (eBPF) programs it loaded and attaches the kept one to
// the next container with the same device rules (agent/devicefilter_linux.go): a template
// clone's first container gets the program its template's warm-up loaded, a pod's second
// container its first one's. Either way the container's cgroup must refuse the devices its
// rules do not allow.

// deviceCheck is what a container of deviceBundle prints when its device filter works:
// /dev/mem's numbers refused by the cgroup (without a filter the open would succeed or fail
// with ENXIO, the guest having no /dev/mem driver), /dev/null's allowed by runc's defaults.
const deviceCheck = "cat: can't open '/memdev': Operation not permitted\nnull-ok\n"

// deviceBundle is a bundle whose rootfs holds a node of /dev/mem's numbers and one of
// /dev/null's, and whose process opens both.
func deviceBundle(t *testing.T, edit func(*specs.Spec), tail ...string) string {
	t.Helper()
	script := "cat /memdev 2>&1 >/dev/null; echo >/nulldev && echo null-ok" + strings.Join(tail, "")
	b := newBundleWith(t, edit, "sh", "-c", script)
	for name, dev := range map[string]uint64{"memdev": unix.Mkdev(1, 1), "nulldev": unix.Mkdev(1, 3)} {
		if err := unix.Mknod(filepath.Join(b, "rootfs", name), unix.S_IFCHR|0o666, int(dev)); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// A template clone's first container: the program comes from the template.
func TestTemplateCloneDeviceFilter(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	createTemplate(t, r)
	p := runCreated(t, r, deviceBundle(t, func(*specs.Spec) {}))
	if !p.cloned() {
		t.Fatalf("pod not cloned:\n%s", p.daemonLog)
	}
	if p.out != deviceCheck {
		t.Errorf("output %q, want %q", p.out, deviceCheck)
	}
}

// A pod's second container with the same rules as its first: the first one's program.
func TestPodMemberDeviceFilter(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	sandbox := newID(t)
	t.Cleanup(func() { runvIn(t, stateRoot, nil, "delete", "--force", sandbox) })
	sb := deviceBundle(t, func(*specs.Spec) {}, "; sleep 1000")
	mustRunv(t, stateRoot, "run", "-d", "--bundle", sb, sandbox)
	waitStatus(t, stateRoot, sandbox, "running")

	mb := deviceBundle(t, func(s *specs.Spec) {
		s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
	})
	res := runvIn(t, stateRoot, nil, "run", "--bundle", mb, newID(t))
	if res.code != 0 {
		t.Fatalf("run member: %s", res)
	}
	if res.stdout != deviceCheck {
		t.Errorf("member's output %q, want %q", res.stdout, deviceCheck)
	}
	if r := runvIn(t, stateRoot, nil, "delete", "--force", sandbox); r.code != 0 {
		t.Fatalf("delete --force sandbox: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}
