package agent

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// maxPathPins bounds the directories pinned per container (one per PATH entry).
const maxPathPins = 32

// pinPath pins the directories of a process's PATH in the container's rootfs (or, for one
// that does not exist, its deepest ancestor that does) for the container's life: the share
// keeps no dentry that nobody holds, so every exec's PATH search walked each entry from
// the root, a 9p round trip per component; with the directories held, a probe of a missing
// name costs the last component's only. Nothing about them is cached: children are looked
// up on the host each time, and QEMU's fids are paths, so a directory the host replaces is
// seen through them. It runs at a container's first exec, in the background: taken during
// the create, its ten-odd walks lengthened NEWCONTAINER by ~15 ms for every container,
// also those that never exec anything (docs/performance.md, "Pooled run and exec, stop 12").
func pinPath(rootfs string, p *specs.Process, pins *pathPins) {
	if p == nil {
		return
	}
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(root)
	for _, dir := range pathDirs(p) {
		pins.pin(root, dir)
	}
}

// pathDirs are the process's PATH directories, in the container's root.
func pathDirs(p *specs.Process) []string {
	var dirs []string
	for _, e := range p.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			for _, dir := range filepath.SplitList(v) {
				if dir == "" {
					dir = "."
				}
				if !filepath.IsAbs(dir) {
					dir = filepath.Join("/", p.Cwd, dir)
				}
				dirs = append(dirs, filepath.Clean(dir))
			}
		}
	}
	return dirs
}

// pathPins are the directories pinPath holds open (O_PATH) for a container, until the
// container goes (close).
type pathPins struct {
	mu     sync.Mutex
	fds    []int
	paths  map[string]bool
	closed bool
}

// pin holds dir, resolved in root, or its deepest ancestor that exists.
func (p *pathPins) pin(root int, dir string) {
	for ; ; dir = filepath.Dir(dir) {
		if p.has(dir) {
			return
		}
		fd, err := unix.Openat2(root, dir, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == nil {
			p.add(dir, fd)
			return
		}
		if !errors.Is(err, unix.ENOENT) || dir == "/" {
			return
		}
	}
}

func (p *pathPins) has(dir string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paths[dir]
}

func (p *pathPins) add(dir string, fd int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.fds) >= maxPathPins {
		unix.Close(fd)
		return
	}
	if p.paths == nil {
		p.paths = map[string]bool{}
	}
	p.paths[dir] = true
	p.fds = append(p.fds, fd)
}

// close releases the pins; later ones are not taken.
func (p *pathPins) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, fd := range p.fds {
		unix.Close(fd)
	}
	p.fds, p.paths = nil, nil
}
