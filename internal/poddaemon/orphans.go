package poddaemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/supervisor"
)

// lockFile is the pod directory's liveness lock: its daemon holds a flock on it from before
// it serves until it exits (the kernel drops the lock with the daemon, however it ends), so
// a pod directory whose lock can be taken has no daemon. A pid would not do: it can be
// reused by the time anyone looks.
const lockFile = "daemon.lock"

// holdLock takes dir's liveness lock, held while the returned file is open (and not after
// this process died). The file is made and locked under a temporary name and renamed into
// place, so that nobody ever sees an unlocked lock of a daemon that is starting.
func holdLock(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "."+lockFile+".*") // close-on-exec: QEMU does not inherit it
	if err != nil {
		return nil, fmt.Errorf("pod directory %s: make its lock: %w", dir, err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, lockFile))
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("pod directory %s: take its lock: %w", dir, err)
	}
	return f, nil
}

// SweepOrphans removes the pod directories under podsDir whose daemon is gone and that no
// container record refers to: what a daemon killed after its last container was deleted
// left (a foreground run that ended its pod does not wait for the daemon's own clean-up),
// with the share's mounts and runv's network state (supervisor.CleanupPodDir). inUse names
// the pod directories (their base names) that container records refer to; it is called only
// when there is a candidate, and a directory it names is left to `runv delete`.
//
// A directory without a lock is left alone: its daemon has not taken it yet (it does before
// it reports ready; a daemon that dies before that is cleaned up by its starter), or it is
// the pod of a daemon of an older runv.
func SweepOrphans(podsDir string, inUse func() (map[string]bool, error)) error {
	entries, err := os.ReadDir(podsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("sweep pod directories: %w", err)
	}
	var orphans []*os.File // their locks, held until they are removed
	defer func() {
		for _, f := range orphans {
			f.Close()
		}
	}()
	for _, e := range entries {
		if f := takeDeadLock(filepath.Join(podsDir, e.Name())); f != nil {
			orphans = append(orphans, f)
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	referenced, err := inUse()
	if err != nil {
		return fmt.Errorf("sweep pod directories: %w", err)
	}
	var errs []error
	for _, f := range orphans {
		dir := filepath.Dir(f.Name())
		if referenced[filepath.Base(dir)] {
			continue // its container's `runv delete` cleans it up
		}
		if err := supervisor.CleanupPodDir(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove orphaned pod directory %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// SweepRoot is SweepOrphans for the pods of the state root root, whose container records
// say which pod directories are in use.
func SweepRoot(root string) error {
	store := &state.Store{Root: root}
	return SweepOrphans(filepath.Join(root, state.PodsDir), store.PodsInUse)
}

// takeDeadLock takes the liveness lock of the pod directory dir if no daemon holds it, and
// returns it held; nil when a daemon holds it, or dir has no lock (yet, or any more).
func takeDeadLock(dir string) *os.File {
	path := filepath.Join(dir, lockFile)
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil
	}
	// A daemon that ended after the open removed its directory, lock and all: what we
	// locked must still be the directory's lock.
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &now) != nil || held.Ino != now.Ino || held.Dev != now.Dev {
		f.Close()
		return nil
	}
	return f
}
