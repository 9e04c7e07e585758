package agent

import (
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// prefetchLimit bounds how much of a program prefetchFile reads ahead: the pod's page
// cache is the guest's memory (128 MiB by default).
const prefetchLimit = 8 << 20

// maxPathPins bounds the paths pinned per container (one per PATH entry, and the program).
const maxPathPins = 32

// warmProgramPath prepares, in the background of a container's creation, what running its
// programs from the pod's 9p share costs on the only vCPU:
//
//   - the directories of the process's PATH (or, for one that does not exist, its deepest
//     ancestor that does) are pinned for the container's life (pins): the share keeps no
//     dentry that nobody holds, so every exec's PATH search walked each entry from the
//     root, a 9p round trip per component; with the directories held, a probe of a missing
//     name costs the last component's only. Nothing about them is cached: children are
//     looked up on the host each time, and QEMU's fids are paths, so a directory the host
//     replaces is seen through them.
//   - the program the process will exec is read into the guest's page cache, and held
//     (the share drops the inode of a file nobody holds, and its pages with it): for a
//     pod's first program (nothing in this VM read it before; a pooled VM's warm-up
//     container ran from a tmpfs) its pages were read from the host fault by fault, after
//     the start. Read ahead here, the reads overlap the create's other steps.
//
// Both are hints, not decisions: the program is looked up in the rootfs alone, as the
// process's PATH and cwd name it (exec.LookPath's rules; a volume mounted over a PATH
// directory is not seen), so it may read another file than the one exec'd, or none; the
// exec looks the program up again, in the container. Lookups stay in the rootfs
// (RESOLVE_IN_ROOT), only regular files are read (a device node is never opened), at most
// prefetchLimit bytes.
//
// tr (runv.trace=1) gets a step when the pins are taken and when the program was read, if
// that is before the create's trace ends.
func warmProgramPath(rootfs string, p *specs.Process, pins *pathPins, tr *stepTrace) {
	if p == nil || len(p.Args) == 0 || p.Args[0] == "" {
		return
	}
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(root)
	// The program first: its exec follows the create at once in a foreground run, the
	// pins serve later execs.
	for _, cand := range programCandidates(p) {
		if fd, ok := prefetchFile(root, cand); ok {
			// Held, or the share would drop the inode, and its pages with it, as soon as
			// the file is closed: nothing else in the VM holds it until the exec.
			pins.add(cand, fd)
			tr.mark("warm: program read ahead")
			break
		}
	}
	for _, dir := range pathDirs(p) {
		pins.pin(root, dir)
	}
	tr.mark("warm: PATH pinned")
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

// programCandidates are the paths, in the container's root, where the exec would look for
// the process's program, in order (Go's exec.LookPath, which runc's exec follows).
func programCandidates(p *specs.Process) []string {
	name := p.Args[0]
	if strings.Contains(name, "/") {
		if filepath.IsAbs(name) {
			return []string{name}
		}
		return []string{filepath.Join("/", p.Cwd, name)}
	}
	var cands []string
	for _, dir := range pathDirs(p) {
		cands = append(cands, filepath.Join(dir, name))
	}
	return cands
}

// prefetchFile reads path, resolved in root, into the page cache if it is an executable
// regular file, and returns it (O_PATH) with ok; the caller holds or closes it.
func prefetchFile(root int, path string) (fd int, ok bool) {
	fd, err := unix.Openat2(root, path, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		unix.Close(fd)
		return -1, false
	}
	populate(fd, int(min(st.Size, prefetchLimit)))
	return fd, true
}

// populate faults the first size bytes of the file behind the O_PATH descriptor fd into
// the page cache, through a mapping, as an exec's own faults would (with the share's
// readahead, up to msize per 9p read): read(2) on the share with cache=mmap bypasses the
// page cache, and FADV_WILLNEED reads one readahead window only.
func populate(fd, size int) {
	if size == 0 {
		return
	}
	// Reopened for reading through the O_PATH descriptor: the file checked is the one read.
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(rfd)
	m, err := unix.Mmap(rfd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return
	}
	defer unix.Munmap(m)
	_ = unix.Madvise(m, unix.MADV_POPULATE_READ)
}

// pathPins are the directories (and the program) warmProgramPath holds open (O_PATH) for a
// container, until the container goes (close).
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
