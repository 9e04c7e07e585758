//go:build integration && soak

package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The soak (make soak; not part of make test: about half an hour under TCG): pods in a row,
// then pods started at once, then concurrent execs into one pod. Every operation must
// succeed, and what a leak would grow must be flat from the first pods to the last.
//
//	RUNV_SOAK_PODS     pods in a row (default 500; 0: only the concurrent parts)
//	RUNV_SOAK_TABLE    file to write the results table to (markdown)

// soakWindow is how many pods at each end of the row are compared.
const soakWindow = 50

// soakSample is what the host looks like between two pods of the row.
type soakSample struct {
	hostFiles   int // allocated file handles, host-wide (/proc/sys/fs/file-nr; other users move it)
	runvProcs   int // processes whose command line names the soak's state root
	hostMounts  int // mounts in the host's mount namespace
	rootMounts  int // mounts under the state root
	hostLinks   int // network interfaces in the host's network namespace (taps would show here)
	rootEntries int // directories left under the state root (state and pod directories)
	cgroups     int // host cgroups of the soak's containers
	ownFds      int // descriptors of the test process (the clients' side)
	daemonRSS   int // kB: VmRSS of the pod's daemon, sampled while the pod ran (after an exec)
	daemonFds   int // descriptors of the pod's daemon at the same moment
}

func TestSoak(t *testing.T) {
	pods := 500
	if v := os.Getenv("RUNV_SOAK_PODS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || (n != 0 && n < 2*soakWindow) {
			t.Fatalf("RUNV_SOAK_PODS=%q: want 0 or a number ≥ %d", v, 2*soakWindow)
		}
		pods = n
	}
	stateRoot := newRoot(t)
	cgPrefix := "/runv-soak-" + strconv.Itoa(os.Getpid())
	bundleOf := func(name string, args ...string) string {
		return newBundleWith(t, func(s *specs.Spec) { s.Linux.CgroupsPath = cgPrefix + "-" + name }, args...)
	}
	// One bundle per kind for the row (one pod at a time: their cgroups never meet).
	echo, sleeper, exit3 := bundleOf("echo", "sh", "-c", "echo pod"), bundleOf("sleep", "sleep", "1000"), bundleOf("exit3", "sh", "-c", "exit 3")
	var report strings.Builder

	if pods > 0 {
		soakRow(t, pods, stateRoot, cgPrefix, echo, sleeper, exit3, &report)
	}

	// 2. Pods started at once.
	const together = 20
	started := concurrently(t, together, func(i int) string {
		id := fmt.Sprintf("soak-c%d", i)
		if r := runvIn(t, stateRoot, nil, "run", "-d", "--bundle", bundleOf(id, "sleep", "1000"), id); r.code != 0 {
			return fmt.Sprintf("run -d %s: %s", id, r)
		}
		if r := runvIn(t, stateRoot, nil, "exec", id, "echo", id); r.code != 0 || r.stdout != id+"\n" {
			return fmt.Sprintf("exec in %s: %s", id, r)
		}
		return ""
	})
	for i := 0; i < together; i++ {
		mustRunv(t, stateRoot, "delete", "--force", fmt.Sprintf("soak-c%d", i))
	}
	assertEmptyRoot(t, stateRoot)
	fmt.Fprintf(&report, "\n%d pods started at once (run -d, then an exec in each): all running and answering in %s; all deleted, nothing left.\n", together, started.Round(time.Millisecond))

	// 3. Concurrent execs into one pod.
	const execs = 100
	id := "soak-execs"
	mustRunv(t, stateRoot, "run", "-d", "--bundle", sleeper, id)
	waitStatus(t, stateRoot, id, "running")
	rssBefore, fdsBefore := daemonOf(t, stateRoot)
	execTook := concurrently(t, execs, func(i int) string {
		want := fmt.Sprintf("exec %d", i)
		if r := runvIn(t, stateRoot, nil, "exec", id, "echo", want); r.code != 0 || r.stdout != want+"\n" {
			return fmt.Sprintf("exec %d: %s", i, r)
		}
		return ""
	})
	rssAfter, fdsAfter := daemonOf(t, stateRoot)
	if fdsAfter > fdsBefore {
		t.Errorf("the pod daemon holds %d descriptors after %d execs, %d before", fdsAfter, execs, fdsBefore)
	}
	mustRunv(t, stateRoot, "delete", "--force", id)
	assertEmptyRoot(t, stateRoot)
	fmt.Fprintf(&report, "\n%d concurrent execs into one pod: all succeeded with their output, in %s; the pod daemon's descriptors %d before, %d after; VmRSS %d kB before, %d kB after.\n",
		execs, execTook.Round(time.Millisecond), fdsBefore, fdsAfter, rssBefore, rssAfter)

	t.Logf("soak:\n%s", report.String())
	if out := os.Getenv("RUNV_SOAK_TABLE"); out != "" {
		os.WriteFile(out, []byte(report.String()), 0o644)
	}
}

// concurrently runs f(0), …, f(n-1) at once, fails the test with each message they return,
// and returns how long they took together.
func concurrently(t *testing.T, n int, f func(i int) string) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if e := f(i); e != "" {
				errs <- e
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	return time.Since(start)
}

func (s soakSample) leftovers() bool {
	return s.runvProcs > 0 || s.rootEntries > 0 || s.rootMounts > 0 || s.cgroups > 0
}

func mean(s []soakSample, get func(soakSample) int) float64 {
	sum, n := 0, 0
	for _, x := range s {
		if v := get(x); v >= 0 {
			sum += v
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(sum) / float64(n)
}

// daemonOf returns the VmRSS (kB) and descriptor count of the only pod daemon of stateRoot.
func daemonOf(t *testing.T, stateRoot string) (int, int) {
	t.Helper()
	pids := findPids(stateRoot, "\x00containerd\x00")
	if len(pids) != 1 {
		t.Fatalf("want one pod daemon under %s, found %v", stateRoot, pids)
	}
	return vmRSS(pids[0]), countFds(pids[0])
}

func vmRSS(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return -1
}

func sampleHost(stateRoot, cgPrefix string) soakSample {
	var s soakSample
	if b, err := os.ReadFile("/proc/sys/fs/file-nr"); err == nil {
		s.hostFiles, _ = strconv.Atoi(strings.Fields(string(b))[0])
	}
	s.runvProcs = len(processesNaming(stateRoot))
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(strings.TrimSpace(string(mounts)), "\n") {
		s.hostMounts++
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], stateRoot) {
			s.rootMounts++
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	s.hostLinks = len(links)
	for _, d := range []string{stateRoot, filepath.Join(stateRoot, "@pods")} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if e.Name() != "@pods" {
				s.rootEntries++
			}
		}
	}
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*" + cgPrefix + "*")
	s.cgroups = len(cgs)
	fds, _ := os.ReadDir("/proc/self/fd")
	s.ownFds = len(fds)
	s.daemonRSS, s.daemonFds = -1, -1
	return s
}

// soakRow runs pods in a row, four kinds in turn, and reports what a leak would grow, from
// the first pods to the last.
func soakRow(t *testing.T, pods int, stateRoot, cgPrefix, echo, sleeper, exit3 string, report *strings.Builder) {
	samples := make([]soakSample, 0, pods)
	start := time.Now()
	for i := 0; i < pods; i++ {
		id := fmt.Sprintf("soak-%d", i)
		daemonRSS, daemonFds := -1, -1 // measured by the kinds with an exec
		switch i % 4 {
		case 0: // foreground run, output and exit code
			r := mustRunv(t, stateRoot, "run", "--bundle", echo, id)
			if r.stdout != "pod\n" {
				t.Fatalf("pod %d: run printed %q", i, r.stdout)
			}
		case 1: // detached run, exec, kill, delete
			mustRunv(t, stateRoot, "run", "-d", "--bundle", sleeper, id)
			if r := mustRunv(t, stateRoot, "exec", id, "echo", "exec "+id); r.stdout != "exec "+id+"\n" {
				t.Fatalf("pod %d: exec printed %q", i, r.stdout)
			}
			daemonRSS, daemonFds = daemonOf(t, stateRoot)
			mustRunv(t, stateRoot, "kill", id, "KILL")
			waitStatus(t, stateRoot, id, "stopped")
			mustRunv(t, stateRoot, "delete", id)
		case 2: // a failing process: its exit code passes through
			if r := runvIn(t, stateRoot, nil, "run", "--bundle", exit3, id); r.code != 3 {
				t.Fatalf("pod %d: run of exit 3: %s", i, r)
			}
		case 3: // create, start, detached exec, delete --force
			mustRunv(t, stateRoot, "create", "--bundle", sleeper, id)
			mustRunv(t, stateRoot, "start", id)
			mustRunv(t, stateRoot, "exec", "-d", id, "sleep", "500")
			daemonRSS, daemonFds = daemonOf(t, stateRoot)
			mustRunv(t, stateRoot, "delete", "--force", id)
		}
		// What a pod leaves must be gone once its last command returned; a process on
		// its way out gets a moment.
		s := sampleHost(stateRoot, cgPrefix)
		for deadline := time.Now().Add(15 * time.Second); s.leftovers() && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			s = sampleHost(stateRoot, cgPrefix)
		}
		if s.leftovers() {
			t.Fatalf("pod %d left something behind: %+v", i, s)
		}
		s.daemonRSS, s.daemonFds = daemonRSS, daemonFds
		samples = append(samples, s)
		if (i+1)%soakWindow == 0 {
			// The window's means as it goes, so that a run cut short still shows the trend.
			w := samples[len(samples)-soakWindow:]
			t.Logf("%d pods in %s; last %d: runv processes %.1f, host mounts %.1f, host links %.1f, test fds %.1f, daemon RSS %.0f kB, daemon fds %.1f",
				i+1, time.Since(start).Round(time.Second), soakWindow,
				mean(w, func(s soakSample) int { return s.runvProcs }), mean(w, func(s soakSample) int { return s.hostMounts }),
				mean(w, func(s soakSample) int { return s.hostLinks }), mean(w, func(s soakSample) int { return s.ownFds }),
				mean(w, func(s soakSample) int { return s.daemonRSS }), mean(w, func(s soakSample) int { return s.daemonFds }))
		}
	}
	took := time.Since(start)
	first, last := samples[:soakWindow], samples[len(samples)-soakWindow:]
	fmt.Fprintf(report, "%d pods in a row in %s (%.2f s a pod), all succeeded.\n\n", pods, took.Round(time.Second), took.Seconds()/float64(pods))
	report.WriteString("| measure (mean over 50 pods) | first 50 | last 50 | flat? |\n|---|---|---|---|\n")
	for _, m := range []struct {
		name  string
		get   func(soakSample) int
		slack float64 // allowed growth, absolute
		noisy bool    // host-wide and moved by others: shown, not judged
	}{
		{"runv processes left after a pod", func(s soakSample) int { return s.runvProcs }, 0, false},
		{"mounts under the state root", func(s soakSample) int { return s.rootMounts }, 0, false},
		{"state and pod directories left", func(s soakSample) int { return s.rootEntries }, 0, false},
		{"host cgroups left", func(s soakSample) int { return s.cgroups }, 0, false},
		{"descriptors of the test process", func(s soakSample) int { return s.ownFds }, 2, false},
		{"network interfaces in the host netns", func(s soakSample) int { return s.hostLinks }, 0, true},
		{"mounts in the host mount namespace", func(s soakSample) int { return s.hostMounts }, 0, true},
		{"file handles host-wide", func(s soakSample) int { return s.hostFiles }, 0, true},
		{"pod daemon VmRSS, kB (pods with an exec)", func(s soakSample) int { return s.daemonRSS }, 0, false},
		// A fresh daemon per pod, sampled while its exec's streams and connections come and
		// go: the window means wander by a few tenths (33.4–33.8 over 500 pods); a leak in
		// state the daemons share would grow with the pods, past one descriptor.
		{"pod daemon descriptors (pods with an exec)", func(s soakSample) int { return s.daemonFds }, 1, false},
	} {
		a, b := mean(first, m.get), mean(last, m.get)
		verdict := "yes"
		switch {
		case m.noisy:
			verdict = "host-wide (others' jobs move it)"
		case m.name == "pod daemon VmRSS, kB (pods with an exec)":
			// A fresh daemon per pod: what would grow is shared state (events, logs).
			if b > a*1.1 {
				verdict = "**no**"
				t.Errorf("%s: %.0f → %.0f", m.name, a, b)
			}
		case b > a+m.slack:
			verdict = "**no**"
			t.Errorf("%s: %.1f → %.1f", m.name, a, b)
		}
		fmt.Fprintf(report, "| %s | %.1f | %.1f | %s |\n", m.name, a, b, verdict)
	}
}
