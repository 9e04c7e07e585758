//go:build integration

package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/internal/mounts"
)

// guestRelease reads the release string ("6.1.192") out of the kernel image under test.
func guestRelease(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`Linux version (\S+) `).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no 'Linux version' banner in %s", kernel)
	}
	return string(m[1])
}

func TestRunPrintsGuestKernelRelease(t *testing.T) {
	t.Parallel()
	b := newBundle(t, "uname", "-r")
	r := runv(t, nil, "run", "--bundle", b, newID(t))
	if r.code != 0 {
		t.Fatalf("runv run uname -r: %s", r)
	}
	want := guestRelease(t)
	if got := strings.TrimSpace(r.stdout); got != want {
		t.Fatalf("uname -r in the container = %q, want the guest kernel's %q (%s)", got, want, r)
	}
	if hb, _ := os.ReadFile("/proc/sys/kernel/osrelease"); strings.TrimSpace(string(hb)) == want {
		t.Fatalf("guest and host kernels have the same release %q: the test cannot tell them apart", want)
	}
	t.Logf("runv run uname -r took %s", r.took)
}

// TestRunGuestRandomReady: a directly booted guest's kernel RNG is ready for its first
// container, although STARTPOD gives it no host entropy (only restored VMs get some): its
// CRNG was seeded at boot from its own virtio-rng. Linux 6.1 reports 256 bits in
// entropy_avail once the CRNG is initialized, and getrandom(2) blocks before that.
func TestRunGuestRandomReady(t *testing.T) {
	t.Parallel()
	b := newBundle(t, "cat", "/proc/sys/kernel/random/entropy_avail")
	r := runv(t, nil, "run", "--bundle", b, newID(t))
	if r.code != 0 {
		t.Fatalf("runv run cat entropy_avail: %s", r)
	}
	if got := strings.TrimSpace(r.stdout); got != "256" {
		t.Fatalf("entropy_avail in a directly booted guest = %q, want 256 (CRNG initialized) (%s)", got, r)
	}
}

func TestRunExitCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"exit 3", []string{"sh", "-c", "exit 3"}, 3, ""},
		{"missing executable", []string{"/no/such/program"}, 127, "/no/such/program"},
		{"stdout and stderr", []string{"sh", "-c", "echo out; echo err >&2; exit 0"}, 0, "err"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBundle(t, tt.args...)
			r := runv(t, nil, "run", "--bundle", b, newID(t))
			if r.code != tt.wantCode {
				t.Fatalf("exit code %d, want %d: %s", r.code, tt.wantCode, r)
			}
			if tt.wantStderr != "" && !strings.Contains(r.stderr, tt.wantStderr) {
				t.Fatalf("stderr does not mention %q: %s", tt.wantStderr, r)
			}
		})
	}
}

// Once `runv run` or the `runv delete` of a pod's last container returned, nothing of the
// pod is mounted under the state root: a caller that removes the root at once (as a test's
// cleanup does) must not reach the bundle's rootfs through the share's bind of it. (The
// share was unmounted with the pod's end, a few ms after the answer, until stop 18.)
func TestPodEndLeavesNoMountWhenTheCommandReturns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		end  func(t *testing.T, stateRoot, bundle, id string)
	}{
		{"run", func(t *testing.T, stateRoot, bundle, id string) {
			if r := runvIn(t, stateRoot, nil, "run", "--bundle", bundle, id); r.code != 0 {
				t.Fatalf("run: %s", r)
			}
		}},
		{"create, start, delete", func(t *testing.T, stateRoot, bundle, id string) {
			for _, args := range [][]string{{"create", "--bundle", bundle, id}, {"start", id}} {
				if r := runvIn(t, stateRoot, nil, args...); r.code != 0 {
					t.Fatalf("%s: %s", args[0], r)
				}
			}
			waitStatus(t, stateRoot, id, "stopped")
			if r := runvIn(t, stateRoot, nil, "delete", id); r.code != 0 {
				t.Fatalf("delete: %s", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := newRoot(t)
			tt.end(t, stateRoot, newBundle(t, "true"), newID(t))
			if m, err := mounts.Under(stateRoot); err != nil || len(m) > 0 {
				t.Errorf("mounted under the state root once the command returned: %v %v", m, err)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}

// A container killed with SIGKILL from outside (runv kill) makes `runv run` exit 137. (A
// shell killing itself would not do: it is PID 1 of its pid namespace, and the kernel drops
// signals PID 1 sent itself without a handler, under runc too.)
func TestRunKilledBySIGKILLExits137(t *testing.T) {
	t.Parallel()
	b := newBundle(t, "sleep", "1000")
	id := newID(t)
	done := make(chan result, 1)
	go func() { done <- runv(t, nil, "run", "--bundle", b, id) }()
	waitStatus(t, root, id, "running")
	if r := runv(t, nil, "kill", id, "9"); r.code != 0 {
		t.Fatalf("kill: %s", r)
	}
	select {
	case r := <-done:
		if r.code != 137 {
			t.Fatalf("runv run of a SIGKILLed container: %s, want exit 137", r)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("runv run did not return within 60s of SIGKILL")
	}
}

func TestRunStdin(t *testing.T) {
	t.Parallel()
	big := make([]byte, 1<<20)
	rand.Read(big)
	tests := []struct {
		name  string
		input []byte
		args  []string
		want  string
	}{
		{"echo data | cat", []byte("data\n"), []string{"cat"}, "data\n"},
		{"1 MiB through cat", big, []string{"sh", "-c", "cat | sha256sum | cut -d' ' -f1"}, sha(big) + "\n"},
		{"1 MiB out", nil, []string{"sh", "-c", "head -c 1048576 /dev/zero"}, string(make([]byte, 1<<20))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBundle(t, tt.args...)
			r := runv(t, tt.input, "run", "--bundle", b, newID(t))
			if r.code != 0 {
				t.Fatalf("%s", r)
			}
			if r.stdout != tt.want {
				t.Fatalf("stdout: %d bytes (sha %s), want %d bytes (sha %s); stderr %q", len(r.stdout), sha([]byte(r.stdout)), len(tt.want), sha([]byte(tt.want)), r.stderr)
			}
		})
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
