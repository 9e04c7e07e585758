package factory

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/mounts"
)

// fileLock is a held flock(2) on a lock file.
type fileLock struct{ f *os.File }

// unlock releases the lock. It is safe on a nil lock.
func (l *fileLock) unlock() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the descriptor releases the flock
		l.f = nil
	}
}

// lockPath takes a shared or exclusive flock on path (created if missing), waiting until ctx
// ends. Lock files may be removed by their holder (remove-template does, under the exclusive
// lock): a lock taken on a file that is no longer at path protects nothing, so it is
// retaken on the new file.
func lockPath(ctx context.Context, path string, exclusive bool) (*fileLock, error) {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := flock(ctx, f, how); err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Ino == now.Ino && held.Dev == now.Dev {
			return &fileLock{f: f}, nil
		}
		f.Close()
	}
}

// flock blocks in flock(2) until the lock is granted or ctx ends. flock cannot be
// interrupted: when ctx ends first, a goroutine keeps waiting and drops the lock (closes
// f) as soon as it is granted. f is closed on error.
func flock(ctx context.Context, f *os.File, how int) error {
	// Uncontended, which is the common case (clones only take shared locks): no goroutine.
	err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return err
	}
	got := make(chan error, 1)
	go func() {
		for {
			err := unix.Flock(int(f.Fd()), how)
			if !errors.Is(err, unix.EINTR) {
				got <- err
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			f.Close()
		}
		return err
	case <-ctx.Done():
		go func() {
			<-got
			f.Close()
		}()
		return fmt.Errorf("waiting for the lock: %w", ctx.Err())
	}
}

// tmpfsSource names the tmpfs runv mounts on a template directory that is not on tmpfs, so
// that remove-template --all knows it may unmount it.
const tmpfsSource = "runv-templates"

// ensureTmpfs creates dir and mounts a tmpfs on it unless it is on tmpfs already: template
// RAM files must live in memory (a clone maps the file; on a disk filesystem every template
// would be written out and its pages read back through the page cache).
func ensureTmpfs(dir string) (mounted bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create template directory: %w", err)
	}
	// Serialise mounts on the directory itself: a second runtime that waited here finds
	// the tmpfs mounted when it looks again (by path, not through the descriptor, which
	// still names the directory underneath).
	d, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("open template directory: %w", err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock template directory %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("template directory %s: %w", dir, err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		return false, nil
	}
	if err := unix.Mount(tmpfsSource, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
		return false, fmt.Errorf("template directory %s is not on tmpfs and mounting one failed: %w (mount a tmpfs there yourself, or use a directory under /dev/shm)", dir, err)
	}
	return true, nil
}

// ownTmpfs reports whether dir is a mount point of the tmpfs ensureTmpfs mounts.
func ownTmpfs(dir string) bool {
	table, err := mounts.Table()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(table, func(m mounts.Info) bool {
		return m.MountPoint == dir && m.FSType == "tmpfs" && m.Source == tmpfsSource
	})
}
