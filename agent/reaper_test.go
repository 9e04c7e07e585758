package agent

import (
	"os"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProcs stands in for the kernel: a set of zombie children and a log of reaped pids.
type fakeProcs struct {
	mu      sync.Mutex
	zombies []int
	reaped  []int
	// fullScans counts the listings of every zombie (the /proc scan).
	fullScans int
}

func (f *fakeProcs) list() ([]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fullScans++
	return slices.Clone(f.zombies), nil
}

// first is what waitid(WNOWAIT) shows: one zombie, the first the kernel finds.
func (f *fakeProcs) first() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.zombies) == 0 {
		return 0, nil
	}
	return f.zombies[0], nil
}

func (f *fakeProcs) scans() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fullScans
}

func (f *fakeProcs) reap(pid int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.zombies = slices.DeleteFunc(f.zombies, func(p int) bool { return p == pid })
	f.reaped = append(f.reaped, pid)
	return nil
}

func (f *fakeProcs) exit(pids ...int) {
	f.mu.Lock()
	f.zombies = append(f.zombies, pids...)
	f.mu.Unlock()
}

func (f *fakeProcs) reapedPids() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.reaped)
	slices.Sort(out)
	return out
}

func newFakeReaper(t *testing.T) (*reaper, *fakeProcs) {
	f := &fakeProcs{}
	r := newReaper(testLogger(t))
	r.zombies, r.reap, r.anyZombie = f.list, f.reap, f.first
	return r, f
}

// TestReaperScansProcOnlyBehindATrackedZombie checks that the /proc scan (~2.5 ms under
// TCG, several times per exec) runs only when the one zombie waitid shows is tracked and
// may hide orphans behind it.
func TestReaperScansProcOnlyBehindATrackedZombie(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tracked   int // 0: none
		zombies   []int
		reaped    []int
		fullScans int
	}{
		{name: "no zombie", fullScans: 0},
		{name: "orphans only", zombies: []int{200, 201}, reaped: []int{200, 201}, fullScans: 0},
		{name: "tracked after the orphans", tracked: 100, zombies: []int{200, 100}, reaped: []int{200}, fullScans: 1},
		{name: "tracked in front of an orphan", tracked: 100, zombies: []int{100, 200}, reaped: []int{200}, fullScans: 1},
		{name: "tracked, alive", tracked: 100, zombies: []int{200}, reaped: []int{200}, fullScans: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f := newFakeReaper(t)
			if tc.tracked != 0 {
				r.beginStart()(tc.tracked)
			}
			f.exit(tc.zombies...)
			if n := r.scan(); n != len(tc.reaped) {
				t.Errorf("scan reaped %d, want %d", n, len(tc.reaped))
			}
			if got := f.reapedPids(); !slices.Equal(got, tc.reaped) {
				t.Errorf("reaped %v, want %v", got, tc.reaped)
			}
			if got := f.scans(); got != tc.fullScans {
				t.Errorf("%d scans of /proc, want %d", got, tc.fullScans)
			}
		})
	}
}

// A tracked zombie whose waiter reaps it once it reported the exit (reapsAfterReport) hides
// the orphans behind it without a scan of /proc: its untrack scans again and finds them.
func TestReaperWaitsForAReportedExit(t *testing.T) {
	r, f := newFakeReaper(t)
	r.beginStart()(100)
	f.exit(100, 200)
	r.reapsAfterReport(100)
	if n := r.scan(); n != 0 || f.scans() != 0 {
		t.Fatalf("reaped %d with %d scans of /proc behind a zombie being reported, want 0 and 0", n, f.scans())
	}
	_ = f.reap(100) // its waiter's Wait
	r.untrack(100)
	if n := r.scan(); n != 1 || f.scans() != 0 {
		t.Fatalf("after untrack reaped %d with %d scans of /proc, want the orphan and 0", n, f.scans())
	}
	// Untracked, the pid is not marked again; a tracked zombie not being reported is
	// looked past with a scan of /proc, as before.
	r.reapsAfterReport(100)
	r.beginStart()(101)
	f.exit(101, 100)
	if n := r.scan(); n != 1 || f.scans() != 1 {
		t.Errorf("behind a tracked zombie not being reported: reaped %d with %d scans of /proc, want 1 and 1", n, f.scans())
	}
}

func TestReaperReapsOrphansOnly(t *testing.T) {
	r, f := newFakeReaper(t)
	done := r.beginStart()
	done(100) // a container process: its status belongs to libcontainer's Process.Wait
	f.exit(100, 200, 201)
	if n := r.scan(); n != 2 {
		t.Fatalf("reaped %d, want the 2 orphans", n)
	}
	if got := f.reapedPids(); !slices.Equal(got, []int{200, 201}) {
		t.Fatalf("reaped %v, want [200 201] (never the tracked 100)", got)
	}
	// Its waiter collected it (in reality Wait reaps it; here the fake does).
	r.untrack(100)
	if n := r.scan(); n != 1 {
		t.Fatalf("after untrack reaped %d, want 1", n)
	}
}

func TestReaperPausesWhileStarting(t *testing.T) {
	r, f := newFakeReaper(t)
	done := r.beginStart()
	// While libcontainer starts a container, its transient children (runc init stages)
	// exit and are waited for by pid inside Start: none may be taken.
	f.exit(300, 301)
	if n := r.scan(); n != 0 {
		t.Fatalf("reaped %d during a start, want 0", n)
	}
	second := r.beginStart()
	done(0) // first start failed; the second is still running
	if n := r.scan(); n != 0 {
		t.Fatalf("reaped %d while another start runs, want 0", n)
	}
	second(301) // second start's process is 301: tracked
	if n := r.scan(); n != 1 || !slices.Equal(f.reapedPids(), []int{300}) {
		t.Fatalf("reaped %v, want only 300", f.reapedPids())
	}
	// done is idempotent: a second call must not unbalance the counter.
	second(0)
	f.exit(400)
	if n := r.scan(); n != 1 {
		t.Fatalf("reaped %d, want 1 (starting count corrupted?)", n)
	}
}

func TestReaperPokedAfterStart(t *testing.T) {
	r, _ := newFakeReaper(t)
	done := r.beginStart()
	done(1)
	select {
	case <-r.kick:
	default:
		t.Fatal("ending a start did not schedule a scan: zombies skipped during it would linger")
	}
	r.untrack(1)
	select {
	case <-r.kick:
	default:
		t.Fatal("untrack did not schedule a scan")
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		state byte
		ppid  int
		ok    bool
	}{
		{"1234 (sleep) S 1 1234 1234 0 -1", 'S', 1, true},
		{"77 (a b) c) Z 1 77 77 0", 'Z', 1, true},
		{"9 ((sd-pam)) Z 42 9", 'Z', 42, true},
		{"garbage", 0, 0, false},
		{"5 (x)", 0, 0, false},
	} {
		state, ppid, ok := parseStat([]byte(tc.in))
		if state != tc.state || ppid != tc.ppid || ok != tc.ok {
			t.Errorf("parseStat(%q) = %c %d %v, want %c %d %v", tc.in, state, ppid, ok, tc.state, tc.ppid, tc.ok)
		}
	}
}

// TestZombieChildrenReal makes a real zombie child and checks the /proc scan finds it and
// reapPid collects exactly it; childExited tells a running child, a zombie and a reaped one.
func TestZombieChildrenReal(t *testing.T) {
	sleeper, err := os.StartProcess("/bin/sleep", []string{"sleep", "60"}, &os.ProcAttr{})
	if err != nil {
		t.Skipf("cannot start /bin/sleep: %v", err)
	}
	defer func() { _ = sleeper.Kill(); _, _ = sleeper.Wait() }()
	if childExited(sleeper.Pid) {
		t.Errorf("childExited(%d) of a running child", sleeper.Pid)
	}
	if zombie, err := childZombie(os.Getpid()); zombie || err != unix.ECHILD {
		t.Errorf("childZombie of this process = %v, %v; want ECHILD", zombie, err)
	}
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Skipf("cannot start /bin/true: %v", err)
	}
	// Wait for the exit without reaping (WNOWAIT), so it stays a zombie.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	zs, err := zombieChildren()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary may have other children (none that are zombies): waitid shows ours.
	if pid, err := anyZombieChild(); err != nil || pid != p.Pid {
		t.Fatalf("anyZombieChild() = %d, %v; want %d", pid, err, p.Pid)
	}
	if !slices.Contains(zs, p.Pid) {
		t.Fatalf("zombieChildren() = %v, missing %d", zs, p.Pid)
	}
	if slices.Contains(zs, sleeper.Pid) {
		t.Errorf("zombieChildren() = %v lists the running child %d", zs, sleeper.Pid)
	}
	if !childExited(p.Pid) {
		t.Errorf("childExited(%d) of a zombie child", p.Pid)
	}
	if err := reapPid(p.Pid); err != nil {
		t.Fatalf("reapPid: %v", err)
	}
	if !childExited(p.Pid) {
		t.Errorf("childExited(%d) of a reaped child", p.Pid)
	}
	zs, _ = zombieChildren()
	if slices.Contains(zs, p.Pid) {
		t.Fatalf("%d still a zombie after reapPid", p.Pid)
	}
	if pid, err := anyZombieChild(); err != nil || pid != 0 {
		t.Fatalf("after reapPid anyZombieChild() = %d, %v; want 0 (no zombie left)", pid, err)
	}
	p.Release()
}
