// Package shim is the host process that stands in for a container process, `runv shim`
// (Main: signals forwarded, the exit code passed on, the terminal's size relayed), and the
// host-side shape it is given (Start, ForSpec, CreateCgroup), the one a runc container's
// process would have: its own namespaces, or those the config names by path, and the
// cgroup at the config's cgroupsPath. The container itself lives in the VM; what clients
// and tools look at on the host is its stand-in's /proc/<pid>/ns and /proc/<pid>/cgroup,
// and what they configure there (docker puts the container's network interfaces into the
// netns of its pid; CRI and podman hand one container's /proc/<pid>/ns paths to the next)
// must reach a namespace of the container's own, not the host's.
package shim

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/ocispec"
	"github.com/runv-project/runv/errdefs"
)

// kind is a namespace type a stand-in can have: its clone flag and its name in /proc/<pid>/ns.
type kind struct {
	spec specs.LinuxNamespaceType
	flag uintptr
	proc string
}

// kinds are those a stand-in enters or gets, from api/ocispec's table. A new user namespace
// is made apart (it needs the config's id mappings); an existing one cannot be entered by a
// multi-threaded process. A time namespace is not mirrored: only unshare, not clone, makes
// one.
var kinds = func() []kind {
	var out []kind
	for _, t := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.NetworkNamespace, specs.IPCNamespace,
		specs.UTSNamespace, specs.MountNamespace, specs.CgroupNamespace} {
		ns := ocispec.Namespaces[t]
		out = append(out, kind{t, uintptr(ns.CloneFlag), ns.ProcName})
	}
	return out
}()

// Namespaces is where a stand-in goes: new namespaces, and existing ones to join.
type Namespaces struct {
	// Clone are the CLONE_NEW* flags of the namespaces created for it.
	Clone uintptr
	// Join are the namespace files it enters, by clone flag.
	Join map[uintptr]string
	// UIDMappings and GIDMappings map the ids of a new user namespace (CLONE_NEWUSER in
	// Clone). The stand-in keeps its host credentials: it stays the owner of what root owns
	// on the host, such as its pod daemon's socket.
	UIDMappings, GIDMappings []syscall.SysProcIDMap
}

// JoinsMount says whether the stand-in enters another mount namespace, where paths of the
// host's may not exist.
func (n Namespaces) JoinsMount() bool {
	_, ok := n.Join[unix.CLONE_NEWNS]
	return ok
}

// ForSpec gives the stand-in of a container's init the namespaces its config asks for: a
// new one for each entry without a path, the named one for each with a path.
func ForSpec(spec *specs.Spec) Namespaces {
	var n Namespaces
	if spec == nil || spec.Linux == nil {
		return n
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.UserNamespace && ns.Path == "" && len(spec.Linux.UIDMappings) > 0 && len(spec.Linux.GIDMappings) > 0 {
			n.Clone |= unix.CLONE_NEWUSER
			n.UIDMappings, n.GIDMappings = idMaps(spec.Linux.UIDMappings), idMaps(spec.Linux.GIDMappings)
		}
		for _, k := range kinds {
			if k.spec != ns.Type {
				continue
			}
			if ns.Path == "" {
				n.Clone |= k.flag
				continue
			}
			if n.Join == nil {
				n.Join = map[uintptr]string{}
			}
			n.Join[k.flag] = ns.Path
		}
	}
	return n
}

func idMaps(m []specs.LinuxIDMapping) []syscall.SysProcIDMap {
	out := make([]syscall.SysProcIDMap, len(m))
	for i, e := range m {
		out[i] = syscall.SysProcIDMap{ContainerID: int(e.ContainerID), HostID: int(e.HostID), Size: int(e.Size)}
	}
	return out
}

// Of gives the stand-in of an exec'd process the namespaces of its container's stand-in
// (pid): those of them that are not this process's own, as runc's exec enters the
// container's.
func Of(pid int) (Namespaces, error) {
	var n Namespaces
	for _, k := range kinds {
		theirs := fmt.Sprintf("/proc/%d/ns/%s", pid, k.proc)
		same, err := sameNamespace(theirs, "/proc/self/ns/"+k.proc)
		if err != nil {
			return n, fmt.Errorf("namespaces of the container's shim (pid %d): %w", pid, err)
		}
		if !same {
			if n.Join == nil {
				n.Join = map[uintptr]string{}
			}
			n.Join[k.flag] = theirs
		}
	}
	return n, nil
}

func sameNamespace(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, err
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, err
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// Start starts cmd in the namespaces n. Namespaces to join are entered by a thread of ours
// that then starts cmd and dies with its goroutine, never running other Go code: a child
// inherits the namespaces of the thread that forked it. (A Go process cannot enter a user
// namespace, and enters a mount namespace only from a thread with a filesystem context of
// its own, hence the unshare of CLONE_FS.)
func Start(cmd *exec.Cmd, n Namespaces) error {
	if n.Clone != 0 {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Cloneflags |= n.Clone
		cmd.SysProcAttr.UidMappings, cmd.SysProcAttr.GidMappings = n.UIDMappings, n.GIDMappings
	}
	if len(n.Join) == 0 {
		return cmd.Start()
	}
	files := make(map[uintptr]*os.File, len(n.Join))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for flag, path := range n.Join {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("open namespace %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
		files[flag] = f
	}
	var err error
	onDisposableThread(func() {
		if _, ok := files[unix.CLONE_NEWNS]; ok {
			if err = unix.Unshare(unix.CLONE_FS); err != nil {
				err = fmt.Errorf("unshare the filesystem context: %w", err)
				return
			}
		}
		for flag, f := range files {
			if err = unix.Setns(int(f.Fd()), int(flag)); err != nil {
				err = fmt.Errorf("enter namespace %s: %w", n.Join[flag], err)
				return
			}
		}
		err = cmd.Start()
	})
	return err
}

// onDisposableThread runs f on a thread of its own that ends with it. Go ends a thread whose
// goroutine exits locked to it, except the main thread, whose namespaces are also what
// /proc/<pid>/ns shows of the process: f never runs there.
func onDisposableThread(f func()) {
	done := make(chan struct{})
	run := func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked
		f()
	}
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			run()
			return
		}
		// While this goroutine holds the main thread, the next one gets another.
		go run()
		<-done
		runtime.UnlockOSThread()
	}()
	<-done
}
