//go:build integration

// Package integration drives the runv binary as users and clients do, against real VMs:
// QEMU under TCG, our kernel and initrd, libcontainer in the guest.
//
// It needs the artefacts of `make build`, named by RUNV_BINARY, RUNV_KERNEL and RUNV_INITRD
// (`make integration-test` sets them).
package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runv-project/runv/test/bundle"
)

var (
	runvBinary string
	kernel     string
	initrd     string
	// suiteDir holds everything the suite creates; the leak check after the suite covers it.
	suiteDir string
	// root is the state root of the whole suite; tests that need an empty one make their own
	// (shortRoot), below suiteDir too.
	root string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	runvBinary, kernel, initrd = os.Getenv("RUNV_BINARY"), os.Getenv("RUNV_KERNEL"), os.Getenv("RUNV_INITRD")
	for name, v := range map[string]string{"RUNV_BINARY": runvBinary, "RUNV_KERNEL": kernel, "RUNV_INITRD": initrd} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "integration tests need %s (run them with 'make integration-test', which builds and sets it)\n", name)
			return 1
		}
		if _, err := os.Stat(v); err != nil {
			fmt.Fprintf(os.Stderr, "%s=%s: %v (run 'make build')\n", name, v, err)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "rvit")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	suiteDir = dir
	root = filepath.Join(dir, "root")
	code := m.Run()
	if leaks := leaksUnder(dir); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "LEAKS after the suite:\n  %s\n", strings.Join(leaks, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	os.RemoveAll(dir)
	return code
}

// leaksUnder lists what the suite left behind under dir: processes (qemu, pod daemons,
// shims) whose command line names it, mounts below it, and state directories.
func leaksUnder(dir string) []string {
	var leaks []string
	// Processes may still be on their way out after the last delete: give them a moment.
	deadline := time.Now().Add(15 * time.Second)
	for {
		leaks = processesNaming(dir)
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			leaks = append(leaks, "mount "+f[4])
		}
	}
	roots, _ := filepath.Glob(filepath.Join(dir, "*", "root"))
	for _, r := range append(roots, root) {
		entries, _ := os.ReadDir(r)
		for _, e := range entries {
			if e.Name() == "@pods" || e.Name() == "@templates" {
				inner, _ := os.ReadDir(filepath.Join(r, e.Name()))
				for _, p := range inner {
					leaks = append(leaks, "directory "+filepath.Join(r, e.Name(), p.Name()))
				}
				continue
			}
			leaks = append(leaks, "state directory "+filepath.Join(r, e.Name()))
		}
	}
	return leaks
}

func processesNaming(dir string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		out = append(out, "process "+strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
	}
	return out
}

// result is what a runv invocation did.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout: %q\nstderr: %q", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// runv runs the binary with the suite's root, kernel and initrd; stdin may be nil.
func runv(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	return runvIn(t, root, stdin, args...)
}

func runvIn(t *testing.T, stateRoot string, stdin []byte, args ...string) result {
	t.Helper()
	full := append([]string{"--root", stateRoot, "--kernel", kernel, "--initrd", initrd}, args...)
	cmd := exec.Command(runvBinary, full...)
	// Regular files, as OCI conformance suites use: `create` hands its stdio to the
	// container, so a pipe would stay open for as long as the container runs.
	out, errf := tempFile(t), tempFile(t)
	cmd.Stdout, cmd.Stderr = out, errf
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: readFile(t, out), stderr: readFile(t, errf), took: time.Since(start)}
	// Closed now, not when the test ends: a long test (the soak) would hold thousands.
	out.Close()
	errf.Close()
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("runv %v: %v", args, err)
	}
	return r
}

// shortRoot returns a fresh state root whose path is short: the pod's unix sockets live
// under it, and t.TempDir's paths (which carry the test name) can be too long for them.
func shortRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(suiteDir, "rv")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "root")
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stdio")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readFile(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newBundle makes a busybox bundle running args.
func newBundle(t *testing.T, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := bundle.Make(dir, args...); err != nil {
		t.Fatal(err)
	}
	return dir
}

var idSeq atomic.Int64

// newID returns a container id unique in the suite.
func newID(t *testing.T) string {
	n := idSeq.Add(1)
	name := regexp.MustCompile(`[^\w.+-]+`).ReplaceAllString(t.Name(), "-")
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return fmt.Sprintf("%s-%d-%d", strings.Trim(name, "-"), os.Getpid(), n)
}
