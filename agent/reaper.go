package agent

import (
	"context"
	"os"
	"sync"
)

// reaper collects the zombies PID 1 inherits without stealing an exit status that
// libcontainer is waiting for.
//
// Why this design: every process libcontainer spawns is a direct child of the agent (runc
// init's stages are cloned with CLONE_PARENT), and libcontainer reaps them itself with
// wait4/waitid on specific pids: the intermediate stages during Start/Run, and the container
// process in Process.Wait. A blind wait4(-1) would steal those statuses (Start then fails
// with ECHILD, Wait loses the exit code). Orphans reparented to PID 1 (descendants of a
// container that shares the guest's pid namespace, or of an exec'd process) must still be
// reaped, or they stay zombies forever.
//
// So the reaper only reaps what nobody else will:
//   - while any libcontainer Start/Run is in flight it reaps nothing: it cannot tell that
//     call's transient children from orphans (their pids are internal to libcontainer);
//   - a container or exec process's pid is tracked from the end of its Start/Run until its
//     own waiter's Wait returned, and is never reaped here;
//   - everything else that is a zombie child of ours is reaped with wait4(pid, WNOHANG) on
//     that pid only.
//
// It runs on SIGCHLD, and again whenever a start finishes or a tracked pid is released, so
// that a zombie skipped meanwhile is not left behind until the next SIGCHLD.
type reaper struct {
	log *logger

	mu       sync.Mutex
	starting int
	tracked  map[int]struct{}
	// reporting are tracked pids whose waiter reaps them once it reported their exit
	// (reapsAfterReport): a scan that finds one a zombie first does not list every process
	// to look past it, since its untrack, a moment later, scans again.
	reporting map[int]struct{}
	reaped    int // total reaped here, for logs and tests

	kick chan struct{} // capacity 1: "scan again"

	// The OS operations; tests replace them.
	zombies   func() ([]int, error) // zombie children of this process
	reap      func(pid int) error   // wait4(pid, WNOHANG) on that one pid
	anyZombie func() (int, error)   // one zombie child, not reaped (0: none)
}

func newReaper(log *logger) *reaper {
	return &reaper{
		log:       log,
		tracked:   make(map[int]struct{}),
		reporting: make(map[int]struct{}),
		kick:      make(chan struct{}, 1),
		zombies:   zombieChildren,
		reap:      reapPid,
		anyZombie: anyZombieChild,
	}
}

// beginStart must bracket every libcontainer call that spawns and waits for processes.
// The returned function ends the bracket; give it the started process's pid (0 when the
// start failed) to track it until untrack.
func (r *reaper) beginStart() (done func(pid int)) {
	r.mu.Lock()
	r.starting++
	r.mu.Unlock()
	var once sync.Once
	return func(pid int) {
		once.Do(func() {
			r.mu.Lock()
			r.starting--
			if pid > 0 {
				r.tracked[pid] = struct{}{}
			}
			r.mu.Unlock()
			r.poke()
		})
	}
}

// untrack hands pid back to the reaper once its waiter's Wait returned.
func (r *reaper) untrack(pid int) {
	r.mu.Lock()
	delete(r.tracked, pid)
	delete(r.reporting, pid)
	r.mu.Unlock()
	r.poke()
}

// reapsAfterReport tells that the waiter of pid, tracked, reaps it (then untracks it) as
// soon as it reported its exit.
func (r *reaper) reapsAfterReport(pid int) {
	r.mu.Lock()
	if _, ok := r.tracked[pid]; ok {
		r.reporting[pid] = struct{}{}
	}
	r.mu.Unlock()
}

func (r *reaper) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// scan reaps every untracked zombie child, unless a start is in flight. It returns how many
// it reaped.
func (r *reaper) scan() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Holding mu across the scan keeps beginStart from slipping in between the decision
	// and the wait4.
	if r.starting > 0 {
		return 0
	}
	n, clear, first := r.reapUntilTracked()
	if _, soon := r.reporting[first]; clear || soon {
		r.reaped += n
		return n
	}
	pids, err := r.zombies()
	if err != nil {
		r.log.Errorf("reaper: list zombies: %v", err)
		return 0
	}
	for _, pid := range pids {
		if _, ok := r.tracked[pid]; ok {
			continue
		}
		if err := r.reap(pid); err != nil {
			r.log.Debugf("reaper: wait4(%d): %v", pid, err)
			continue
		}
		n++
	}
	r.reaped += n
	if n > 0 {
		r.log.Debugf("reaper: reaped %d orphan(s)", n)
	}
	return n
}

// reapUntilTracked reaps the zombies the kernel shows one at a time (waitid with WNOWAIT
// names one, whichever it finds first) while they are orphans. clear reports that no zombie
// child is left; otherwise the first one shown (first, 0 when waitid failed) is tracked (or
// could not be reaped) and may hide others behind it, which only the full scan of /proc
// finds.
//
// Why: the full scan reads /proc/<pid>/stat of every process of the guest, ~2.5 ms under
// TCG, and runs several times per exec (its helper's exit, the end of the start bracket,
// the program's exit, its untrack); almost always there is no zombie left by then, which
// one waitid tells.
func (r *reaper) reapUntilTracked() (n int, clear bool, first int) {
	for {
		pid, err := r.anyZombie()
		if err != nil {
			return n, false, 0
		}
		if pid == 0 {
			return n, true, 0
		}
		if _, ok := r.tracked[pid]; ok {
			return n, false, pid
		}
		if err := r.reap(pid); err != nil {
			r.log.Debugf("reaper: wait4(%d): %v", pid, err)
			return n, false, pid
		}
		n++
	}
}

// run scans on every SIGCHLD (sigchld) and every poke until ctx ends.
func (r *reaper) run(ctx context.Context, sigchld <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigchld:
		case <-r.kick:
		}
		r.scan()
	}
}
