//go:build integration

package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/test/bundle"
)

// The template factory through the CLI: `runv --factory template ...` clones every pod's VM
// from a template under <root>/@templates, made on first use or by `runv manage
// create-template`. Each test has a root (and so templates) of its own.

// templateRoot returns a fresh state root whose templates, and the tmpfs runv mounts for
// them (the suite's directory is not on tmpfs), are removed after the test.
func templateRoot(t *testing.T) string {
	t.Helper()
	r := shortRoot(t)
	t.Cleanup(func() {
		if res := runvIn(t, r, nil, "manage", "remove-template", "--all"); res.code != 0 {
			t.Errorf("remove-template --all: %s", res)
		}
		assertEmptyRoot(t, r)
	})
	return r
}

// createTemplate runs `runv manage create-template` with extra global flags.
func createTemplate(t *testing.T, r string, global ...string) {
	t.Helper()
	res := runvIn(t, r, nil, append(global, "manage", "create-template")...)
	machine := "microvm"
	if slices.Contains(global, "q35") {
		machine = "q35"
	}
	if res.code != 0 || !strings.Contains(res.stdout, "created template "+machine+"-1c-128m") {
		t.Fatalf("create-template: %s", res)
	}
	t.Logf("create-template: %s", strings.TrimSpace(res.stdout))
}

// podRun is what one container of runCreated did.
type podRun struct {
	out       string // the container's stdout
	daemonLog string // its pod daemon's log, read while the pod ran
	started   time.Time
	stopped   time.Time
}

// runCreated runs a bundle through create, start and delete with the template factory, so
// that the pod daemon's log (which says whether the VM was cloned) can be read while the
// pod exists. The container's stdout is a file, as with OCI conformance suites.
func runCreated(t *testing.T, r, b string) podRun {
	t.Helper()
	id := newID(t)
	out, errf := tempFile(t), tempFile(t)
	cmd := exec.Command(runvBinary, "--root", r, "--kernel", kernel, "--initrd", initrd, "--factory", "template",
		"create", "--bundle", b, id)
	cmd.Stdout, cmd.Stderr = out, errf
	if err := cmd.Run(); err != nil {
		t.Fatalf("create: %v: %s", err, readFile(t, errf))
	}
	var st struct {
		PodDir string `json:"podDir"`
	}
	raw, err := os.ReadFile(filepath.Join(r, id, "state.json"))
	if err == nil {
		err = json.Unmarshal(raw, &st)
	}
	if err != nil || st.PodDir == "" {
		t.Fatalf("state.json of %s: %v: %s", id, err, raw)
	}
	logText, _ := os.ReadFile(filepath.Join(st.PodDir, "daemon.log"))
	run := podRun{daemonLog: string(logText), started: time.Now()}
	if res := runvIn(t, r, nil, "start", id); res.code != 0 {
		t.Fatalf("start: %s", res)
	}
	waitStatus(t, r, id, "stopped")
	run.stopped = time.Now()
	if res := runvIn(t, r, nil, "delete", id); res.code != 0 {
		t.Fatalf("delete: %s", res)
	}
	run.out = readFile(t, out)
	return run
}

func (p podRun) cloned() bool { return strings.Contains(p.daemonLog, "vm cloned from template") }

// Two clones of one template are two machines: different random bytes and UUIDs, and the
// host's time, not the template's stale clock. They keep none of the template's warm-up
// settings: its NIC's hurried multicast reports are back at the kernel's 1 s.
func TestTemplateClonesDiffer(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	// The first pod makes the template.
	b := newBundle(t, "sh", "-c", "head -c16 /dev/urandom | od -An -x; cat /proc/sys/kernel/random/uuid; date +%s; cat /proc/sys/net/ipv6/conf/eth0/mldv2_unsolicited_report_interval")
	first := runCreated(t, r, b)
	if !strings.Contains(first.daemonLog, "booting template VM") || !strings.Contains(first.daemonLog, "template ready") || !first.cloned() {
		t.Fatalf("the first pod did not make the template and clone it:\n%s", first.daemonLog)
	}
	// Age the template: a clone whose clock was not set would be at least this far behind.
	// (Not a synchronisation: the staleness is what is being tested.)
	const age = 5 * time.Second
	time.Sleep(age)

	var runs []podRun
	for range 2 {
		p := runCreated(t, r, b)
		if !p.cloned() {
			t.Fatalf("pod not cloned:\n%s", p.daemonLog)
		}
		runs = append(runs, p)
	}
	var randoms, uuids []string
	for i, p := range runs {
		lines := strings.Split(strings.TrimSpace(p.out), "\n")
		if len(lines) != 4 {
			t.Fatalf("clone %d printed %q", i, p.out)
		}
		if lines[3] != "1000" {
			t.Errorf("clone %d: eth0's MLD report interval %q ms, want the kernel's 1000", i, lines[3])
		}
		randoms, uuids = append(randoms, strings.TrimSpace(lines[0])), append(uuids, lines[1])
		secs, err := strconv.ParseInt(strings.TrimSpace(lines[2]), 10, 64)
		if err != nil {
			t.Fatalf("clone %d: date printed %q", i, lines[2])
		}
		guest := time.Unix(secs, 0)
		// The guest read its clock between start and the stop being seen: whole seconds.
		if guest.Before(p.started.Add(-1500*time.Millisecond)) || guest.After(p.stopped.Add(time.Second)) {
			t.Errorf("clone %d: guest time %s, host ran it between %s and %s: the clock was not set",
				i, guest.Format(time.TimeOnly), p.started.Format(time.StampMilli), p.stopped.Format(time.StampMilli))
		}
		t.Logf("clone %d: random %s, uuid %s, guest time %s (host %s..%s)", i, randoms[i], uuids[i],
			guest.Format(time.TimeOnly), p.started.Format(time.StampMilli), p.stopped.Format(time.StampMilli))
	}
	if randoms[0] == randoms[1] || uuids[0] == uuids[1] {
		t.Errorf("the clones' RNGs agree: %q, %q", randoms, uuids)
	}
	if len(randoms[0]) < 32 {
		t.Errorf("random bytes %q", randoms[0])
	}
}

// Two clones of one template run different containers, each with its own rootfs, hostname
// and output, at the same time.
func TestTemplateClonesRunTheirOwnContainers(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	createTemplate(t, r)
	for _, name := range []string{"alpha", "beta"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			spec, err := bundle.Make(dir, "sh", "-c", "echo host=$(hostname); cat /marker")
			if err != nil {
				t.Fatal(err)
			}
			spec.Hostname = "host-" + name
			if err := bundle.WriteSpec(dir, spec); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "rootfs", "marker"), []byte("rootfs of "+name+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			p := runCreated(t, r, dir)
			if !p.cloned() {
				t.Fatalf("pod not cloned:\n%s", p.daemonLog)
			}
			want := "host=host-" + name + "\nrootfs of " + name + "\n"
			if p.out != want {
				t.Errorf("output %q, want %q", p.out, want)
			}
		})
	}
}

// A template made with another kernel is refused, saying why and how to recreate it, and
// the pod boots directly and runs.
func TestTemplateOtherKernelRefused(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	// Another kernel: the same image under another name.
	other := filepath.Join(t.TempDir(), "vmlinux-other")
	b, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, b, 0o644); err != nil {
		t.Fatal(err)
	}
	createTemplate(t, r, "--kernel", other)

	p := runCreated(t, r, newBundle(t, "echo", "started anyway"))
	if p.cloned() {
		t.Fatalf("a template of another kernel was cloned:\n%s", p.daemonLog)
	}
	for _, want := range []string{
		"template not used: booting directly",
		"template microvm-1c-128m was made with kernel " + other,
		"this pod uses " + kernel,
		"recreate it with 'runv manage create-template",
	} {
		if !strings.Contains(p.daemonLog, want) {
			t.Errorf("daemon log does not say %q:\n%s", want, p.daemonLog)
		}
	}
	if p.out != "started anyway\n" {
		t.Errorf("output %q", p.out)
	}
	// list-templates says the same.
	res := runvIn(t, r, nil, "manage", "list-templates")
	if res.code != 0 || !strings.Contains(res.stdout, "refused: template microvm-1c-128m was made with kernel "+other) {
		t.Errorf("list-templates: %s", res)
	}
}

// Removing the template while a clone runs does not disturb the clone: it maps the RAM
// file privately, and the file lives on until the clone is gone.
func TestTemplateRemovedWhileCloneRuns(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	createTemplate(t, r)
	// The container waits for the go-ahead file, then makes the guest touch plenty of
	// memory it has not used yet (fresh copy-on-write pages of the removed file).
	b := newBundle(t, "sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done; dd if=/dev/zero bs=1M count=48 2>/dev/null | md5sum; echo alive")
	id := newID(t)
	done := make(chan result, 1)
	go func() { done <- runvIn(t, r, nil, "--factory", "template", "run", "--bundle", b, id) }()
	waitStatus(t, r, id, "running")
	if res := runvIn(t, r, nil, "manage", "remove-template"); res.code != 0 {
		t.Fatalf("remove-template: %s", res)
	}
	if _, err := os.Stat(filepath.Join(r, "@templates", "microvm-1c-128m")); !os.IsNotExist(err) {
		t.Fatalf("template still there: %v", err)
	}
	if err := os.WriteFile(filepath.Join(b, "rootfs", "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.code != 0 || !strings.HasSuffix(res.stdout, "alive\n") || !strings.Contains(res.stdout, "-") {
		t.Fatalf("clone after its template was removed: %s", res)
	}
	// Without a template the next pod makes a new one.
	p := runCreated(t, r, newBundle(t, "true"))
	if !p.cloned() || !strings.Contains(p.daemonLog, "template ready") {
		t.Errorf("the next pod did not remake the template:\n%s", p.daemonLog)
	}
}

// An idle guest stops its timer tick, direct boot or clone: under TCG every tick wakes
// QEMU, and a guest that kept its 250 Hz tick burnt 12-22 ms of the host's CPU per second
// doing nothing, in every pooled VM and idle pod. The container sleeps 2 s between two
// reads of its CPU's local timer interrupts: a periodic tick takes ~500 then (fewer only if
// the host starves QEMU, which cannot make this test fail), a tickless idle guest the few
// its sleep and the agent's timers need.
func TestIdleGuestStopsItsTick(t *testing.T) {
	t.Parallel()
	const script = "grep LOC: /proc/interrupts; sleep 2; grep LOC: /proc/interrupts"
	const maxTicks = 200 // over the 2 s sleep; a periodic tick is 500
	r := templateRoot(t)
	for _, tc := range []struct {
		name string
		run  func(b string) string
	}{
		{"direct boot", func(b string) string {
			res := runvIn(t, r, nil, "run", "--bundle", b, newID(t))
			if res.code != 0 {
				t.Fatalf("run: %s", res)
			}
			return res.stdout
		}},
		// The first pod makes the template, the second is a clone of it.
		{"template clone", func(b string) string {
			runCreated(t, r, newBundle(t, "true"))
			p := runCreated(t, r, b)
			if !p.cloned() {
				t.Fatalf("pod not cloned:\n%s", p.daemonLog)
			}
			return p.out
		}},
	} {
		out := tc.run(newBundle(t, "sh", "-c", script))
		var counts []int
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "LOC:" {
				continue
			}
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("%s: /proc/interrupts line %q", tc.name, line)
			}
			counts = append(counts, n)
		}
		if len(counts) != 2 {
			t.Fatalf("%s: the container printed %q, want two LOC: lines", tc.name, out)
		}
		ticks := counts[1] - counts[0]
		t.Logf("%s: %d local timer interrupts in an idle 2 s", tc.name, ticks)
		if ticks > maxTicks {
			t.Errorf("%s: %d local timer interrupts while the guest slept 2 s (at most %d): its tick does not stop when idle", tc.name, ticks, maxTicks)
		}
	}
}
