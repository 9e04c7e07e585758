//go:build integration

package integration

import (
	"slices"

	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Bad input must fail fast, say what is wrong and where, and leave nothing behind. Each case
// gets its own state root so "nothing behind" can be checked exactly. The catalog is listed
// in docs/reliability.md ("Bad input catalog").
func TestBadInputFailsFastAndLeavesNothing(t *testing.T) {
	t.Parallel()
	good := newBundle(t, "true")
	// variant is good's rootfs with an edited config.
	variant := func(edit func(*specs.Spec)) string { return newBundleWith(t, edit, "true") }
	terminal := variant(func(s *specs.Spec) { s.Process.Terminal = true })

	noRootfs := t.TempDir()
	copyFile(t, filepath.Join(good, "config.json"), filepath.Join(noRootfs, "config.json"))

	badJSON := t.TempDir()
	os.Symlink(filepath.Join(good, "rootfs"), filepath.Join(badJSON, "rootfs"))
	os.WriteFile(filepath.Join(badJSON, "config.json"), []byte(`{"ociVersion": "1.0.2", "process": {`), 0o644)

	noConfig := t.TempDir()
	aFile := filepath.Join(t.TempDir(), "file")
	os.WriteFile(aFile, nil, 0o644)

	tests := []struct {
		name    string
		args    []string
		wantErr []string // all must appear in stderr
		slow    bool     // fails only once the VM is up: not held to "fast"
	}{
		// Boot files and global flags.
		{"missing kernel", []string{"--kernel", "/nonexistent/vmlinux", "run", "--bundle", good, "k1"}, []string{"kernel", "/nonexistent/vmlinux", "not found"}, false},
		{"missing initrd", []string{"--initrd", "/nonexistent/initrd.img", "run", "--bundle", good, "i1"}, []string{"initrd", "/nonexistent/initrd.img"}, false},
		{"unknown accelerator", []string{"--accel", "warp", "run", "--bundle", good, "a1"}, []string{"--accel", "warp", "auto, kvm or tcg"}, false},
		{"unknown machine", []string{"--machine", "pc-i440", "run", "--bundle", good, "m1"}, []string{"--machine", "microvm or q35"}, false},
		{"VM memory too small", []string{"--default_memory", "0", "run", "--bundle", good, "d1"}, []string{"--default_memory", "at least 64"}, false},
		{"no vCPUs", []string{"--default_cpus", "0", "run", "--bundle", good, "d2"}, []string{"--default_cpus"}, false},
		// Factory policies.
		{"factory policy not JSON", []string{"--factory", `[{"cache":`, "run", "--bundle", good, "f1"}, []string{"factory policy", "expected e.g."}, false},
		{"factory policy negative", []string{"--factory", `[{"cache":-1}]`, "run", "--bundle", good, "f2"}, []string{"factory policy entry 0", "negative"}, false},
		{"factory policy misspelt field", []string{"--factory", `[{"templat":true}]`, "run", "--bundle", good, "f3"}, []string{"unknown field", "templat"}, false},
		{"factory policy duplicate size", []string{"--factory", `[{"cpu":1},{"cpu":1}]`, "run", "--bundle", good, "f4"}, []string{"factory policy entry 1", "second entry"}, false},
		// Ids.
		{"id with a slash", []string{"run", "--bundle", good, "../x"}, []string{"invalid container id", "../x"}, false},
		{"id with a space", []string{"run", "--bundle", good, "a b"}, []string{"invalid container id", "a b"}, false},
		{"id too long", []string{"run", "--bundle", good, strings.Repeat("x", 251)}, []string{"251 characters long", "at most 250"}, false},
		{"empty id", []string{"run", "--bundle", good, ""}, []string{"container id is empty"}, false},
		{"no id", []string{"run", "--bundle", good}, []string{"exactly one container id"}, false},
		{"unknown container", []string{"state", "nosuch"}, []string{"nosuch", "does not exist"}, false},
		{"exec in an unknown container", []string{"exec", "nosuch", "true"}, []string{"nosuch", "does not exist"}, false},
		// Bundles and config fields.
		{"missing bundle", []string{"run", "--bundle", "/nonexistent/b", "b1"}, []string{"/nonexistent/b/config.json", "not found"}, false},
		{"bundle is a file", []string{"run", "--bundle", aFile, "b2"}, []string{aFile, "not a directory"}, false},
		{"missing rootfs", []string{"run", "--bundle", noRootfs, "r1"}, []string{"rootfs", "does not exist"}, false},
		{"invalid config.json", []string{"run", "--bundle", badJSON, "j1"}, []string{"config.json", "not a valid OCI runtime config"}, false},
		{"no config.json", []string{"run", "--bundle", noConfig, "c1"}, []string{"config.json", "not found"}, false},
		{"empty process.args", []string{"run", "--bundle", variant(func(s *specs.Spec) { s.Process.Args = nil }), "c2"}, []string{"process.args is empty"}, false},
		{"relative process.cwd", []string{"run", "--bundle", variant(func(s *specs.Spec) { s.Process.Cwd = "rel" }), "c3"}, []string{"process.cwd", "absolute"}, false},
		{"unsupported ociVersion", []string{"run", "--bundle", variant(func(s *specs.Spec) { s.Version = "9.9.9" }), "c4"}, []string{"ociVersion", "9.9.9", "not supported"}, false},
		{"host network", []string{"run", "--bundle", variant(func(s *specs.Spec) { dropNamespace(s, specs.NetworkNamespace) }), "c5"}, []string{"host network", "give it a network namespace"}, true}, // refused by the pod daemon
		{"namespace path that does not exist", []string{"run", "--bundle", variant(func(s *specs.Spec) { setNamespacePath(s, specs.NetworkNamespace, "/proc/999999/ns/net") }), "c6"}, []string{"linux.namespaces", "/proc/999999/ns/net"}, false},
		// Sizes.
		{"1000 CPUs", []string{"run", "--bundle", variant(func(s *specs.Spec) {
			quota, period := int64(100000000), uint64(100000)
			s.Linux.Resources = &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}
		}), "s1"}, []string{"1000 vCPUs", "between 1 and"}, false},
		// Terminals and console sockets.
		{"console socket that does not exist", []string{"create", "--console-socket", "/nonexistent/sock", "--bundle", terminal, "t1"}, []string{"console socket", "/nonexistent/sock"}, false},
		{"console socket that is a file", []string{"create", "--console-socket", aFile, "--bundle", terminal, "t2"}, []string{"console socket", aFile}, false},
		{"detached terminal without console socket", []string{"create", "--bundle", terminal, "t3"}, []string{"--console-socket"}, false},
		// Files runv writes for its caller.
		{"pid file in a missing directory", []string{"run", "-d", "--pid-file", "/nonexistent/dir/pid", "--bundle", good, "p1"}, []string{"--pid-file", "/nonexistent/dir"}, true},
		// Signals.
		{"bad signal name", []string{"kill", "nosuch", "SIGNOPE"}, []string{"unknown signal"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := shortRoot(t)
			// The global flags of the case come first; runvIn adds the suite's kernel/initrd,
			// which a later --kernel/--initrd in the case overrides.
			r := refused(t, stateRoot, tt.args, tt.wantErr)
			if r.took > 5*time.Second && !tt.slow {
				t.Errorf("took %s to fail; bad input must fail fast", r.took)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}

// refused runs runv with args and checks that it fails and that stderr names every one of
// wantErr.
func refused(t *testing.T, stateRoot string, args, wantErr []string) result {
	t.Helper()
	r := runvIn(t, stateRoot, nil, args...)
	if r.code == 0 {
		t.Fatalf("succeeded: %s", r)
	}
	for _, w := range wantErr {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not mention %q: %s", w, r)
		}
	}
	return r
}

func dropNamespace(s *specs.Spec, typ specs.LinuxNamespaceType) {
	var ns []specs.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		if n.Type != typ {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
}

func setNamespacePath(s *specs.Spec, typ specs.LinuxNamespaceType, path string) {
	for i := range s.Linux.Namespaces {
		if s.Linux.Namespaces[i].Type == typ {
			s.Linux.Namespaces[i].Path = path
		}
	}
}

// Bad input aimed at a running container is refused with a clear error, and the container
// goes on untouched: same processes, still running, nothing added to its state.
func TestBadInputToARunningContainer(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "300"))
	defer deleteAndCheck(t, stateRoot, id)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	before := psJSON(t, stateRoot, id)
	stateFiles := func() []string {
		entries, _ := os.ReadDir(filepath.Join(stateRoot, id))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	filesBefore := stateFiles()

	tests := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"process.json not JSON", []string{"exec", "-p", file("p1.json", `{"args":`), id}, []string{"--process", "not an OCI process object"}},
		{"process.json without args", []string{"exec", "-p", file("p2.json", `{"args":[],"cwd":"/"}`), id}, []string{"--process", "args must not be empty"}},
		{"process.json missing", []string{"exec", "-p", filepath.Join(dir, "nope.json"), id}, []string{"--process", "no such file"}},
		{"resources JSON not JSON", []string{"update", "-r", file("r1.json", `{"memory":`), id}, []string{"--resources", "not OCI linux resources JSON"}},
		{"resources JSON of the wrong type", []string{"update", "-r", file("r2.json", `{"memory":{"limit":"x"}}`), id}, []string{"--resources", "memory.limit"}},
		{"memory size with a bad suffix", []string{"update", "--memory", "12xb", id}, []string{"--memory", "12xb"}},
		{"signal number out of range", []string{"kill", id, "99"}, []string{"invalid signal", "99", "1 to 64"}},
		{"unknown signal name", []string{"kill", id, "SIGFOO"}, []string{"unknown signal", "SIGFOO"}},
		{"user that is not uid:gid", []string{"exec", "--user", "a:b:c", id, "true"}, []string{"--user", "a:b:c"}},
		{"relative exec cwd", []string{"exec", "--cwd", "rel", id, "true"}, []string{"cwd", "absolute"}},
		{"program that does not exist", []string{"exec", id, "/nonexistent-binary"}, []string{"/nonexistent-binary", "not found"}},
		{"delete while running", []string{"delete", id}, []string{"not stopped", "--force"}},
		{"resume when not paused", []string{"resume", id}, []string{"not paused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			refused(t, stateRoot, tt.args, tt.wantErr)
			if st := stateOf(t, stateRoot, id); st.Status != "running" {
				t.Fatalf("container is %q after the refused input", st.Status)
			}
			if after := psJSON(t, stateRoot, id); !sameInts(before, after) {
				t.Errorf("processes changed: %v before, %v after", before, after)
			}
			if after := stateFiles(); !slices.Equal(filesBefore, after) {
				t.Errorf("state directory changed: %v before, %v after", filesBefore, after)
			}
		})
	}
}

func TestDuplicateIDRefused(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sleep", "30")
	id := newID(t)
	if r := runvIn(t, stateRoot, nil, "create", "--bundle", b, id); r.code != 0 {
		t.Fatalf("create: %s", r)
	}
	r := runvIn(t, stateRoot, nil, "create", "--bundle", b, id)
	if r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second create of %s: %s", id, r)
	}
	// The first container is untouched by the failed attempt.
	if st := stateOf(t, stateRoot, id); st.Status != "created" {
		t.Fatalf("first container is %q after a refused duplicate, want created", st.Status)
	}
	if r := runvIn(t, stateRoot, nil, "delete", id); r.code != 0 {
		t.Fatalf("delete: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertEmptyRoot checks that a state root holds no container or pod, and that nothing runs
// or is mounted for it.
func assertEmptyRoot(t *testing.T, stateRoot string) {
	t.Helper()
	assertRootHolds(t, stateRoot, false)
}

// assertOnlyTemplates is assertEmptyRoot for a root whose templates (and their tmpfs) are
// meant to outlive the pods: a pool refilled from a template leaves the template behind.
func assertOnlyTemplates(t *testing.T, stateRoot string) {
	t.Helper()
	assertRootHolds(t, stateRoot, true)
}

func assertRootHolds(t *testing.T, stateRoot string, templates bool) {
	t.Helper()
	templatesDir := filepath.Join(stateRoot, "@templates")
	deadline := time.Now().Add(15 * time.Second)
	for {
		var left []string
		left = append(left, processesNaming(stateRoot)...)
		entries, _ := os.ReadDir(stateRoot)
		for _, e := range entries {
			if e.Name() == "@templates" && templates {
				continue
			}
			if e.Name() == "@pods" || e.Name() == "@templates" {
				inner, _ := os.ReadDir(filepath.Join(stateRoot, e.Name()))
				for _, p := range inner {
					left = append(left, e.Name()+"/"+p.Name())
				}
				continue
			}
			left = append(left, "state "+e.Name())
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, stateRoot) && !(templates && strings.Contains(line, " "+templatesDir+" ")) {
				left = append(left, "mounts under "+stateRoot)
				break
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind under %s: %v", stateRoot, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
