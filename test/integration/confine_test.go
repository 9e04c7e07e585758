//go:build integration

package integration

import (
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// qemuOf returns the pid of the QEMU of a running container's pod, from its pid file.
func qemuOf(t *testing.T, stateRoot, id string) int {
	t.Helper()
	var pid int
	filepath.WalkDir(podDirOf(t, stateRoot, id), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "qemu.pid" {
			pid = readPid(t, p)
		}
		return nil
	})
	if pid == 0 {
		t.Fatalf("no qemu.pid in the pod directory of %s", id)
	}
	return pid
}

// procStatus returns the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// writableWithCaps makes the container's rootfs writable and gives its process caps.
func writableWithCaps(caps ...string) func(*specs.Spec) {
	return func(s *specs.Spec) {
		s.Root.Readonly = false
		c := s.Process.Capabilities
		c.Bounding = append(c.Bounding, caps...)
		c.Effective = append(c.Effective, caps...)
		c.Permitted = append(c.Permitted, caps...)
	}
}

// A guest that breaks out of its kernel holds QEMU: what /proc says QEMU may do is what
// the attacker may do.
func TestQEMUConfined(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	b := newBundleWith(t, writableWithCaps("CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID"), "sleep", "300")
	id := runDetached(t, stateRoot, b)
	defer deleteAndCheck(t, stateRoot, id)
	pid := qemuOf(t, stateRoot, id)
	st := procStatus(t, pid)

	// CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID (bits 0-4) and NET_ADMIN (12).
	const wantCaps = "000000000000101f"
	for field, want := range map[string]string{
		"Seccomp":    "2", // -sandbox on
		"NoNewPrivs": "1",
		"CapEff":     wantCaps,
		"CapPrm":     wantCaps,
		"Uid":        "65534\t65534\t65534\t65534",
		"Gid":        "65534\t65534\t65534\t65534",
	} {
		if st[field] != want {
			t.Errorf("qemu (pid %d) %s: %q, want %q", pid, field, st[field], want)
		}
	}
	cg, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cg), "0::/runv-qemu/") {
		t.Errorf("qemu is not in a cgroup of its own under /runv-qemu: %s", cg)
	}

	// Every socket of the pod is owner-only, in owner-only directories.
	sockets := 0
	filepath.WalkDir(podDirOf(t, stateRoot, id), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSocket == 0 {
			return nil
		}
		sockets++
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket %s: mode %v, want 0600", p, fi.Mode().Perm())
		}
		if fi, err := os.Stat(filepath.Dir(p)); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("directory of socket %s: mode %v, want 0700", p, fi.Mode().Perm())
		}
		return nil
	})
	if sockets < 5 { // QMP, control, stream; the daemon's API and stdio sockets
		t.Errorf("found %d sockets in the pod directory, want at least 5", sockets)
	}

	// 9p still serves the pod's files with the guest's owners and modes, from a QEMU that
	// is neither root nor holds more than qemuCaps. (FIFOs and device nodes cannot be made
	// over the share, confined or not: QEMU 7.2's 9p answers ENXIO.)
	r := mustRunv(t, stateRoot, "exec", id, "sh", "-c",
		"touch /owned && chown 1234:5678 /owned && chmod 4750 /owned && stat -c '%u:%g %a' /owned")
	if !strings.Contains(r.stdout, "1234:5678 4750") {
		t.Errorf("ownership or setuid bit lost over 9p: %s", r)
	}
	// And on the host the file is the guest's, not QEMU's user's.
	var fst unix.Stat_t
	if err := unix.Stat(filepath.Join(b, "rootfs", "owned"), &fst); err != nil || fst.Uid != 1234 || fst.Gid != 5678 || fst.Mode&unix.S_ISUID == 0 {
		t.Errorf("owned on the host: uid %d gid %d mode %o (%v), want 1234:5678 with setuid", fst.Uid, fst.Gid, fst.Mode, err)
	}
}

// A guest that gets to the whole 9p share (root in the guest, outside its container: here a
// container in the guest's PID namespace reaching the agent's mount through /proc/1/root,
// as an escaped container could) reaches the pod's files and nothing else of the host: not
// through "..", not through symlinks (the guest resolves them, in the guest), not through
// host mounts made after the pod started outside its share.
func TestGuestCannotLeaveTheShare(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	token := make([]byte, 16)
	rand.Read(token)
	secret := "runv-secret-" + hex.EncodeToString(token)
	hostDir := t.TempDir() // outside every share
	if err := os.WriteFile(filepath.Join(hostDir, "secret"), []byte(secret+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := newBundleWith(t, func(s *specs.Spec) {
		writableWithCaps("CAP_SYS_PTRACE")(s)
		var ns []specs.LinuxNamespace
		for _, n := range s.Linux.Namespaces {
			if n.Type != specs.PIDNamespace {
				ns = append(ns, n)
			}
		}
		s.Linux.Namespaces = ns
	}, "sleep", "300")
	// Host-side symlinks in the share, pointing at the host's secret.
	rootfs := filepath.Join(b, "rootfs")
	if err := os.Symlink(filepath.Join(hostDir, "secret"), filepath.Join(rootfs, "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.Repeat("../", 30)+strings.TrimPrefix(hostDir, "/"), filepath.Join(rootfs, "rel-link")); err != nil {
		t.Fatal(err)
	}
	id := runDetached(t, stateRoot, b)
	defer deleteAndCheck(t, stateRoot, id)

	// A host mount made after the pod started, outside the share.
	later := t.TempDir()
	if err := unix.Mount(hostDir, later, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(later, unix.MNT_DETACH)

	const share = "/proc/1/root" + agentproto.SharePath
	script := strings.Join([]string{
		"ls " + share + "/" + id + "/rootfs/bin >/dev/null || exit 90",
		"cat /abs-link /rel-link/secret " + share + "/../secret " + share + "/../../../../secret",
		"cat " + share + "/" + id + "/rootfs/abs-link " + share + "/" + id + "/rootfs/rel-link/secret",
		"cat " + filepath.Join(share, strings.Repeat("../", 20), hostDir, "secret"),
		"cat " + filepath.Join(share, hostDir, "secret"), // as if the share were the host's root
		"cat " + filepath.Join(later, "secret") + " " + filepath.Join(hostDir, "secret"),
		"find " + share + " -maxdepth 6 -name 'secret*' | grep . && echo FOUND-IN-SHARE",
		"echo walked",
	}, "; ")
	r := runvIn(t, stateRoot, nil, "exec", id, "sh", "-c", script)
	if r.code == 90 {
		t.Fatalf("the guest could not reach the share to attack it: %s", r)
	}
	if !strings.Contains(r.stdout, "walked") {
		t.Fatalf("the attack script did not run to its end: %s", r)
	}
	if strings.Contains(r.stdout+r.stderr, secret) || strings.Contains(r.stdout, "FOUND-IN-SHARE") {
		t.Fatalf("the guest read a host file outside its share: %s", r)
	}
}

// The guest's serial console reaches the host's disk: guest root writing to it without
// end (here 5 MB through /dev/ttyS0 of the guest) costs the host at most 4 MiB of
// console.log, and the guest is not blocked.
func TestGuestConsoleIsBounded(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	b := newBundleWith(t, func(s *specs.Spec) {
		writableWithCaps("CAP_SYS_PTRACE")(s)
		dropNamespace(s, specs.PIDNamespace)
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	}, "sh", "-c", `head -c 5000000 /dev/zero | tr '\000' x > /proc/1/root/dev/ttyS0 && echo flooded`)
	id := newID(t)
	mustRunv(t, stateRoot, "run", "-d", "--bundle", b, id)
	defer deleteAndCheck(t, stateRoot, id)
	var console string
	filepath.WalkDir(podDirOf(t, stateRoot, id), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "console.log" {
			console = p
		}
		return nil
	})
	waitUntil(t, "the flood to end", 5*time.Minute, func() bool { return stateOf(t, stateRoot, id).Status == "stopped" })
	fi, err := os.Stat(console)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 4 << 20
	if fi.Size() < limit || fi.Size() > limit+200 {
		t.Fatalf("console.log is %d bytes after a 5 MB flood, want 4 MiB and the truncation note", fi.Size())
	}
	b2, _ := os.ReadFile(console)
	if !strings.HasSuffix(strings.TrimSpace(string(b2)), "the rest was dropped]") {
		t.Errorf("console.log does not end with the truncation note: %q", b2[len(b2)-200:])
	}
	t.Logf("console.log: %d bytes after the guest wrote 5000000", fi.Size())
}
