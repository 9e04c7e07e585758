// Package state keeps the runtime's on-disk record of containers and pods under --root, in
// the manner of runsc's state files: one directory per container holding state.json (written
// atomically) and a lock file taken with flock, so concurrent CLI calls on one container are
// serialised and a crashed daemon leaves a record that the next command can reason about.
//
//	<root>/<container id>/state.json   what the CLI recorded at create (never the live status)
//	<root>/<container id>/lock
//	<root>/@pods/<pod id>/             the pod daemon's directory (sockets, VM, share, logs)
//
// "@" cannot appear in a container id, so the pods directory never collides with one.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/atomicfile"
	"github.com/runv-project/runv/internal/shim"
)

// Status values, as the OCI runtime spec names them.
const (
	StatusCreating = "creating"
	StatusCreated  = "created"
	StatusRunning  = "running"
	StatusPaused   = "paused"
	StatusStopped  = "stopped"
)

const (
	stateFile = "state.json"
	lockFile  = "lock"
	// PodsDir is the directory under the root that holds pod directories.
	PodsDir = "@pods"
)

// MaxIDLength bounds a container id: it names the container's state directory, and a
// file name has at most 255 bytes (NAME_MAX).
const MaxIDLength = 250

// validID is runc's rule for container ids.
var validID = regexp.MustCompile(`^[\w+\-.]+$`)

// ValidateID checks a container id the way runc does, plus the names a path cannot hold.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("container id is empty: give the container a name: %w", errdefs.ErrInvalidArgument)
	}
	if !validID.MatchString(id) || id == "." || id == ".." {
		return fmt.Errorf("invalid container id %q: use letters, digits and + - . _ only: %w", id, errdefs.ErrInvalidArgument)
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("container id %.32q... is %d characters long: at most %d (it names a directory): %w", id, len(id), MaxIDLength, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Container is what the CLI records about a container when it is created.
type Container struct {
	ID          string            `json:"id"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Created     time.Time         `json:"created"`
	// Pod is the id of the pod (and its daemon) the container lives in.
	Pod string `json:"pod"`
	// PodDir is the pod daemon's directory.
	PodDir string `json:"podDir"`
	// Sandbox is true for the container that created the pod.
	Sandbox bool `json:"sandbox,omitempty"`
	// Shim is the host process standing in for the container's init.
	Shim Process `json:"shim"`
	// Daemon is the pod daemon.
	Daemon Process `json:"daemon"`
	// Spec is the config.json the container was created from (hooks run from it at delete).
	Spec *specs.Spec `json:"spec,omitempty"`
	// Exec lists the shims of exec'd processes by exec id.
	Exec map[string]Process `json:"exec,omitempty"`
	// HostCgroup holds the container's shims on the host (none for a foreground run).
	HostCgroup *shim.Cgroup `json:"hostCgroup,omitempty"`
}

// Process identifies a host process robustly against pid reuse.
type Process struct {
	Pid int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks since boot).
	StartTime uint64 `json:"startTime"`
}

// Store is the state root.
type Store struct {
	Root string
}

// Handle is a locked container directory. Methods other than Unlock must be called with the
// lock held, i.e. before Unlock.
type Handle struct {
	ID   string
	Dir  string
	lock *os.File
}

// Dir returns the container directory for id.
func (s *Store) Dir(id string) string { return filepath.Join(s.Root, id) }

// PodDir returns the directory of pod podID.
func (s *Store) PodDir(podID string) string { return filepath.Join(s.Root, PodsDir, podID) }

// Create makes the directory of a new container and locks it. It fails with ErrAlreadyExists
// when the id is taken.
func (s *Store) Create(id string) (*Handle, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Root, 0o711); err != nil {
		return nil, fmt.Errorf("create state root %s: %w", s.Root, err)
	}
	dir := s.Dir(id)
	if err := os.Mkdir(dir, 0o711); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("container %q already exists (state in %s): %w", id, dir, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("create state directory for %q: %w", id, err)
	}
	h, err := lockDir(id, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return h, nil
}

// Lock locks the directory of an existing container. It fails with ErrNotFound when there is
// no such container.
func (s *Store) Lock(id string) (*Handle, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	dir := s.Dir(id)
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		return nil, notExist(id, s.Root)
	}
	h, err := lockDir(id, dir)
	if errors.Is(err, fs.ErrNotExist) {
		// Removed between the check and the lock file's open (its directory went with it).
		return nil, notExist(id, s.Root)
	}
	if err != nil {
		return nil, err
	}
	// The container may have been deleted while we waited for the lock.
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		h.Unlock()
		return nil, notExist(id, s.Root)
	}
	return h, nil
}

// RemoveOrphan removes the directory of id if it holds no record: what a create that died
// before recording its container left. It waits for a create in progress, which holds the
// lock until it has recorded the container or removed its directory.
func (s *Store) RemoveOrphan(id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	dir := s.Dir(id)
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	h, err := lockDir(id, dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		h.Unlock() // recorded meanwhile: not an orphan
		return nil
	}
	return h.Remove()
}

func lockDir(id, dir string) (*Handle, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock of container %q: %w", id, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock container %q: %w", id, err)
	}
	return &Handle{ID: id, Dir: dir, lock: f}, nil
}

// notExistError is runc's text for an unknown container, "container does not exist" (which
// clients match), naming the container and the root it was looked up in. Its class is
// errdefs.ErrNotFound.
type notExistError struct{ id, root string }

func (e notExistError) Error() string {
	return fmt.Sprintf("container does not exist: no container %q under %s", e.id, e.root)
}

func (e notExistError) Is(target error) bool { return target == errdefs.ErrNotFound }

func notExist(id, root string) error { return notExistError{id: id, root: root} }

// Unlock releases the lock.
func (h *Handle) Unlock() {
	if h.lock != nil {
		h.lock.Close() // closing the descriptor drops the flock
		h.lock = nil
	}
}

// Load reads the container's record.
func (h *Handle) Load() (*Container, error) { return loadRecord(h.ID, h.Dir) }

// loadRecord reads the record of container id, kept in dir; errdefs.ErrNotFound when there
// is none.
func loadRecord(id, dir string) (*Container, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, notExist(id, filepath.Dir(dir))
		}
		return nil, fmt.Errorf("read state of container %q: %w", id, err)
	}
	var c Container
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("state of container %q is corrupt (%s): %w", id, filepath.Join(dir, stateFile), err)
	}
	return &c, nil
}

// Save writes the container's record atomically.
func (h *Handle) Save(c *Container) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state of container %q: %w", h.ID, err)
	}
	return atomicfile.Write(filepath.Join(h.Dir, stateFile), b, 0o600)
}

// Remove deletes the container directory (and with it the record), then unlocks.
func (h *Handle) Remove() error {
	defer h.Unlock()
	// Remove the record first: a concurrent Lock that already waits sees "does not exist".
	if err := os.Remove(filepath.Join(h.Dir, stateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state of container %q: %w", h.ID, err)
	}
	if err := os.RemoveAll(h.Dir); err != nil {
		return fmt.Errorf("remove state directory of container %q: %w", h.ID, err)
	}
	return nil
}

// List returns the ids of all containers with a record, sorted.
func (s *Store) List() ([]string, error) {
	entries, err := os.ReadDir(s.Root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list %s: %w", s.Root, err)
	}
	var ids []string
	for _, e := range entries {
		if !e.IsDir() || ValidateID(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.Root, e.Name(), stateFile)); err == nil {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// PodsInUse returns the base names of the pod directories that container records refer to.
// It reads the records without their locks (they are replaced atomically, never torn), so
// that a command holding one does not hold it up; a record it cannot read fails it, as it
// might name any pod.
func (s *Store) PodsInUse() (map[string]bool, error) {
	ids, err := s.List()
	if err != nil {
		return nil, err
	}
	inUse := map[string]bool{}
	for _, id := range ids {
		c, err := loadRecord(id, s.Dir(id))
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		if c.PodDir != "" {
			inUse[filepath.Base(c.PodDir)] = true
		}
	}
	return inUse, nil
}
