//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/test/bundle"
)

// qemuMount is one line of /proc/<qemu>/mountinfo.
type qemuMount struct {
	point, fstype string
	options       []string // per-mount options (ro, nosuid, ...)
}

func (m qemuMount) has(opt string) bool {
	for _, o := range m.options {
		if o == opt {
			return true
		}
	}
	return false
}

// mountsOf reads the mount table of process pid's mount namespace.
func mountsOf(t *testing.T, pid int) []qemuMount {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []qemuMount
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		sep := 0
		for i, v := range f {
			if v == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep == 0 || sep+1 >= len(f) {
			t.Fatalf("malformed mountinfo line %q", l)
		}
		out = append(out, qemuMount{point: mounts.Unescape(f[4]), fstype: f[sep+1], options: strings.Split(f[5], ",")})
	}
	return out
}

// assertOwnMountNamespace fails unless pid runs in a mount namespace other than ours.
func assertOwnMountNamespace(t *testing.T, pid int) {
	t.Helper()
	qemuNS, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	hostNS, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	if qemuNS == hostNS {
		t.Fatalf("qemu (pid %d) runs in the host's mount namespace %s", pid, hostNS)
	}
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// A running pod's QEMU has a mount namespace of its own that shows only what it needs —
// its VM directory and the pod's share, kernel and initrd, a few devices, a process-only
// /proc, and the binary's files read-only — and what the pod mounts after QEMU started
// still reaches it: a second container's rootfs, and a volume's mount made on the host
// after that container started. Both ways propagation can start: a state root on a
// private file system (this host's: the launcher makes the share a shared mount of its
// own), and on a shared one (a systemd host's: nothing is added).
func TestQEMUJailed(t *testing.T) {
	for _, tt := range []struct {
		name string
		root func(*testing.T) string
	}{
		{"private file system", shortRoot},
		{"shared file system", sharedRoot},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testQEMUJailed(t, tt.root(t))
		})
	}
}

// sharedRoot is a state root on a tmpfs that is a shared mount, as / is on systemd hosts.
func sharedRoot(t *testing.T) string {
	t.Helper()
	dir := filepath.Dir(shortRoot(t))
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "root")
}

func testQEMUJailed(t *testing.T, stateRoot string) {
	sandbox := runSandbox(t, stateRoot, "sleep", "1000")
	waitStatus(t, stateRoot, sandbox, "running")
	pid := qemuOf(t, stateRoot, sandbox)
	assertOwnMountNamespace(t, pid)

	// A member created after the VM started, with an rslave volume whose source is a
	// shared mount (as under /var/lib/kubelet).
	src := sharedSource(t)
	memberBundle := t.TempDir()
	mp, err := bundle.Make(memberBundle, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	mp.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
	mp.Mounts = append(mp.Mounts, specs.Mount{Destination: "/mnt/vol", Type: "bind", Source: src, Options: []string{"rbind", "rslave"}})
	if err := bundle.WriteSpec(memberBundle, mp); err != nil {
		t.Fatal(err)
	}
	member := newID(t)
	t.Cleanup(func() { runvIn(t, stateRoot, nil, "delete", "--force", member) })
	if r := runvIn(t, stateRoot, nil, "run", "-d", "--bundle", memberBundle, member); r.code != 0 {
		t.Fatalf("run -d member: %s", r)
	}
	if qemuOf(t, stateRoot, member) != pid {
		t.Fatalf("the member did not join the sandbox's VM")
	}
	if r := mustRunv(t, stateRoot, "exec", member, "cat", "/etc/hostname"); r.code != 0 {
		t.Fatalf("the member's rootfs (mounted after QEMU started) is not served: %s", r)
	}
	mountLater(t, src)
	if r := mustRunv(t, stateRoot, "exec", member, "cat", "/mnt/vol/sub/file"); strings.TrimSpace(r.stdout) != "mounted-later" {
		t.Errorf("a volume's mount made on the host after the member started does not reach the guest: %s", r)
	}

	podDir := podDirOf(t, stateRoot, sandbox)
	share := filepath.Join(podDir, "share")
	boot := map[string]bool{}
	for _, f := range []string{os.Getenv("RUNV_KERNEL"), os.Getenv("RUNV_INITRD")} {
		if p, err := filepath.EvalSymlinks(f); err == nil {
			boot[p] = true
		}
	}
	devices := map[string]bool{"/dev/null": true, "/dev/urandom": true, "/dev/net/tun": true, "/dev/kvm": true}
	// QEMU's own binary, wherever it is (runv's build: /usr/local/libexec/runv, or the
	// suite's RUNV_QEMU), read-only like the host's libraries.
	qemuBinary, err := exec.LookPath(hypervisor.DefaultQEMU())
	if err != nil {
		t.Fatalf("the suite's QEMU: %v", err)
	}
	if qemuBinary, err = filepath.EvalSymlinks(qemuBinary); err != nil {
		t.Fatal(err)
	}
	qemuMounts := mountsOf(t, pid)
	seen := map[string]bool{}
	for _, m := range qemuMounts {
		var why string
		switch {
		case m.point == "/":
			if m.fstype != "tmpfs" || !m.has("ro") {
				why = "root is not a read-only tmpfs"
			}
		case m.point == "/proc":
			if m.fstype != "proc" {
				why = "not a proc"
			}
		case under(m.point, podDir):
			// The VM's directory and the share, with what the pod mounted in it.
		case boot[m.point], devices[m.point]:
		case m.point == qemuBinary || under(m.point, "/usr") || under(m.point, "/lib") || under(m.point, "/lib64"):
			if !m.has("ro") {
				why = "a host system file QEMU may write"
			}
		default:
			why = "not something QEMU needs"
		}
		for _, host := range []string{"/home", "/root", "/etc", "/var", "/sys", "/run", "/boot", "/srv", "/opt"} {
			if under(m.point, host) {
				why = "the host's " + host
			}
		}
		if why != "" {
			t.Errorf("qemu's mount namespace has %s (%s): %s", m.point, m.fstype, why)
		}
		seen[m.point] = true
	}
	for _, want := range []string{
		"/", "/proc", filepath.Join(podDir, "vm"), share,
		filepath.Join(share, sandbox, "rootfs"), filepath.Join(share, member, "rootfs"),
		filepath.Join(share, member, "volumes", strconv.Itoa(len(mp.Mounts)-1), "vol", "sub"),
	} {
		if !seen[want] {
			t.Errorf("qemu's mount namespace lacks %s", want)
		}
	}
	// Through QEMU's root, the host's files are not there.
	for _, p := range []string{"/etc/passwd", "/home", "/root", "/var", stateRoot + "/" + sandbox} {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/root" + p); err == nil {
			t.Errorf("%s is visible in qemu's root", p)
		}
	}
	t.Logf("qemu (pid %d) sees %d mounts", pid, len(qemuMounts))
	if t.Failed() {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
		t.Logf("/proc/%d/mountinfo:\n%s", pid, b)
	}

	if r := runvIn(t, stateRoot, nil, "delete", "--force", member); r.code != 0 {
		t.Fatalf("delete member: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "delete", "--force", sandbox); r.code != 0 {
		t.Fatalf("delete sandbox: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}
