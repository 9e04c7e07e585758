// Command guestfloor measures, inside a runv guest, what the kernel calls of a container's
// creation cost on their own: the floor beside each step of docs/performance.md's
// breakdown of NEWCONTAINER and EXECCMD. It runs as the process of a privileged container
// (all capabilities, no seccomp) whose rootfs holds it, and prints one line per operation:
// its name and the median, min and max of N runs in milliseconds.
//
//	guestfloor [-n N] [-agent PATH]     (PATH: a copy of the guest agent binary to time its start)
//
// Build it static (CGO_ENABLED=0); bench/containersteps.sh runs it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// noopArg makes the program exit at once: the start cost of a small static Go binary.
const noopArg = "guestfloor-noop"

func main() {
	if len(os.Args) > 1 && os.Args[1] == noopArg {
		return
	}
	n := flag.Int("n", 10, "runs per operation")
	agent := flag.String("agent", "", "agent binary whose start to time (runv-warmup-noop)")
	crun := flag.String("crun", "", "bundle (config.json, rootfs) for timing crun in this guest")
	flag.Parse()
	if err := run(*n, *agent, *crun); err != nil {
		fmt.Fprintln(os.Stderr, "guestfloor:", err)
		os.Exit(1)
	}
}

type op struct {
	name string
	do   func() error
}

func run(n int, agent, crunBundle string) error {
	if cs, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource"); err == nil {
		// Timings below are only as fine as the clock: jiffies tick every 4 ms.
		fmt.Printf("clocksource: %s", cs)
	}
	// A tmpfs of its own: the container's /dev/shm is noexec.
	const scratch = "/tmp"
	if err := unix.Mount("tmpfs", scratch, "tmpfs", 0, "mode=1777"); err != nil {
		return fmt.Errorf("mount a tmpfs on %s: %w", scratch, err)
	}
	defer unix.Unmount(scratch, unix.MNT_DETACH)
	self, err := copyExe("/proc/self/exe", filepath.Join(scratch, "self"))
	if err != nil {
		return err
	}
	trueTmpfs, err := copyExe("/bin/busybox", filepath.Join(scratch, "true"))
	if err != nil {
		return err
	}
	ops := []op{
		{"fork+exec /bin/true (busybox on 9p)", func() error { return runCmd(0, "/bin/true") }},
		{"fork+exec busybox true (tmpfs)", func() error { return runCmd(0, trueTmpfs, "true") }},
		{fmt.Sprintf("fork+exec a small static Go binary, exit in main (tmpfs, %s)", size(self)), func() error { return runCmd(0, self, noopArg) }},
		{"clone(NEWNS|NEWUTS|NEWIPC|NEWPID|NEWNET|NEWCGROUP)+exec busybox true", func() error {
			return runCmd(unix.CLONE_NEWNS|unix.CLONE_NEWUTS|unix.CLONE_NEWIPC|unix.CLONE_NEWPID|unix.CLONE_NEWNET|unix.CLONE_NEWCGROUP, trueTmpfs, "true")
		}},
	}
	// The floor of an exec into a running container: a small static C program (busybox's
	// nsenter) joins the ipc, uts, pid and mount namespaces of a process, forks into the pid
	// namespace and execs a program there (what runv's exec helper does, without the
	// credentials, capabilities and seccomp).
	target := exec.Command(trueTmpfs, "sleep", "100000")
	target.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWPID}
	if err := target.Start(); err != nil {
		return fmt.Errorf("start a process in namespaces of its own: %w", err)
	}
	defer func() {
		target.Process.Kill()
		target.Wait()
	}()
	tpid := strconv.Itoa(target.Process.Pid)
	ops = append(ops, op{"busybox nsenter into ipc,uts,pid,mnt of a process, fork, exec busybox true (tmpfs)", func() error {
		return runCmd(0, trueTmpfs, "nsenter", "-t", tpid, "-i", "-u", "-p", "-m", "--", trueTmpfs, "true")
	}})
	if agent != "" {
		a, err := copyExe(agent, filepath.Join(scratch, "agent"))
		if err != nil {
			return err
		}
		ops = append(ops, op{fmt.Sprintf("fork+exec the agent binary, exit in main (tmpfs, %s)", size(a)), func() error { return runCmd(0, a, "runv-warmup-noop") }})
		// Which package inits the agent binary's start spends its time in.
		initTrace := exec.Command(a, "runv-warmup-noop")
		initTrace.Env = []string{"GODEBUG=inittrace=1"}
		if out, err := initTrace.CombinedOutput(); err == nil {
			fmt.Printf("%s", slowInits(string(out)))
		}
	}
	mnt := filepath.Join(scratch, "mnt")
	lower1, lower2 := filepath.Join(scratch, "l1"), filepath.Join(scratch, "l2")
	for _, d := range []string{mnt, lower1, lower2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	mountOp := func(name, src, fstype string, flags uintptr, data string) op {
		return op{name, func() error {
			if err := unix.Mount(src, mnt, fstype, flags, data); err != nil {
				return fmt.Errorf("mount %s: %w", fstype, err)
			}
			return unix.Unmount(mnt, unix.MNT_DETACH)
		}}
	}
	fifo := filepath.Join(scratch, "fifo")
	cg := filepath.Join(scratch, "cg")
	ops = append(ops,
		mountOp("mount+umount proc", "proc", "proc", 0, ""),
		mountOp("mount+umount tmpfs", "tmpfs", "tmpfs", 0, "mode=755"),
		mountOp("mount+umount sysfs", "sysfs", "sysfs", 0, ""),
		mountOp("mount+umount mqueue", "mqueue", "mqueue", 0, ""),
		mountOp("mount+umount devpts newinstance", "devpts", "devpts", 0, "newinstance,ptmxmode=0666"),
		mountOp("bind+umount the rootfs (9p)", "/", "", unix.MS_BIND|unix.MS_REC, ""),
		mountOp("mount+umount overlay (2 tmpfs lowers, as exeseal)", "overlay", "overlay", unix.MS_RDONLY, "lowerdir="+lower1+":"+lower2),
		op{"mkfifo+open O_PATH+unlink", func() error {
			if err := unix.Mkfifo(fifo, 0o600); err != nil {
				return err
			}
			fd, err := unix.Open(fifo, unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			unix.Close(fd)
			return os.Remove(fifo)
		}},
		// The 9p rootfs (cache=mmap caches no names): every walk of a path nobody holds asks QEMU for each
		// component; the floor of the init's mountpoint lookups, PATH search and HOME.
		op{"stat of a missing /usr/local/sbin/true (9p rootfs)", func() error {
			var st unix.Stat_t
			if err := unix.Stat("/usr/local/sbin/true", &st); err != unix.ENOENT {
				return fmt.Errorf("stat /usr/local/sbin/true: %v, want ENOENT", err)
			}
			return nil
		}},
		op{"stat of /bin/true, a symlink to /bin/busybox (9p rootfs)", func() error {
			var st unix.Stat_t
			return unix.Stat("/bin/true", &st)
		}},
		op{"PATH search of true, runc's default PATH, a stat per entry (9p rootfs)", func() error {
			for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
				var st unix.Stat_t
				if unix.Stat(d+"/true", &st) == nil {
					return nil
				}
			}
			return errors.New("true not in PATH")
		}},
		op{"open+read+close /etc/passwd (9p rootfs)", func() error {
			_, err := os.ReadFile("/etc/passwd")
			return err
		}},
		op{"cgroup v2: mkdir, move a process in and out, rmdir", func() error { return cgroupCycle(cg) }},
		op{"pivot_root into a tmpfs and back (new mount ns)", pivotCycle(scratch)},
	)
	if crunBundle != "" {
		crunOps, stop, err := crunOps(crunBundle)
		if err != nil {
			return err
		}
		defer stop()
		ops = append(ops, crunOps...)
	}
	for _, o := range ops {
		var times []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			if err := o.do(); err != nil {
				return fmt.Errorf("%s: %w", o.name, err)
			}
			times = append(times, time.Since(start))
		}
		slices.Sort(times)
		fmt.Printf("FLOOR %-70s median %6.2f ms  min %6.2f  max %6.2f\n", o.name, ms(times[len(times)/2]), ms(times[0]), ms(times[len(times)-1]))
	}
	return nil
}

func size(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func copyExe(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", err
	}
	return dst, out.Close()
}

func runCmd(cloneflags uintptr, path string, args ...string) error {
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w (%s)", path, err, out)
	}
	return nil
}

// cgroupCycle creates a child cgroup under a cgroup2 mount of the container's own cgroup
// namespace, moves a forked process into it and out again, and removes it: what
// libcontainer's fs2 manager does per container (without the resource files).
func cgroupCycle(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount cgroup2: %w", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	child := filepath.Join(dir, "floor")
	if err := os.Mkdir(child, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("/bin/sleep", "10")
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := []byte(fmt.Sprint(cmd.Process.Pid))
	err := os.WriteFile(filepath.Join(child, "cgroup.procs"), pid, 0)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if rerr := os.Remove(child); err == nil {
		err = rerr
	}
	return err
}

// pivotCycle returns an operation that, on a thread of its own in a new mount namespace,
// mounts a tmpfs, pivot_roots into it and back out: the jail of every container.
func pivotCycle(scratch string) func() error {
	return func() error {
		errc := make(chan error, 1)
		go func() {
			// The thread is left to die with its mount namespace: never unlocked.
			runtime.LockOSThread()
			errc <- func() error {
				if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
					return fmt.Errorf("unshare: %w", err)
				}
				if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
					return fmt.Errorf("make / private: %w", err)
				}
				root := filepath.Join(scratch, "newroot")
				if err := os.MkdirAll(root, 0o755); err != nil {
					return err
				}
				if err := unix.Mount("tmpfs", root, "tmpfs", 0, ""); err != nil {
					return fmt.Errorf("mount tmpfs: %w", err)
				}
				if err := unix.Chdir(root); err != nil {
					return err
				}
				if err := unix.PivotRoot(".", "."); err != nil {
					return fmt.Errorf("pivot_root: %w", err)
				}
				return unix.Unmount(".", unix.MNT_DETACH)
			}()
		}()
		return <-errc
	}
}

// crunOps time crun, a container runtime in C, in this guest: a whole `crun run` of the
// bundle dir/true (create, start, wait, delete), and `crun exec` of `true` into a running
// container of dir/sleep. crun runs with --cgroup-manager=disabled (this container's
// cgroup2 mount is read-only): the cgroup floor above is to be added to compare.
func crunOps(dir string) ([]op, func(), error) {
	// crun and its libraries from a tmpfs, as the agent is (dir/files lists them): from
	// the 9p rootfs every start would read them over 9p.
	list, err := os.ReadFile(filepath.Join(dir, "files"))
	if err != nil {
		return nil, nil, err
	}
	for i, f := range strings.Fields(string(list)) {
		staged, err := copyExe(f, filepath.Join("/tmp", fmt.Sprintf("crunfile%d", i)))
		if err != nil {
			return nil, nil, err
		}
		if err := unix.Mount(staged, f, "", unix.MS_BIND, ""); err != nil {
			return nil, nil, fmt.Errorf("bind %s over %s: %w", staged, f, err)
		}
	}
	crun := func(args ...string) error {
		return runCmd(0, "/usr/bin/crun", append([]string{"--root", "/tmp/crun", "--cgroup-manager=disabled"}, args...)...)
	}
	i := 0
	run := op{"crun run (create+start+wait+delete) of true, rootfs on 9p, no cgroup", func() error {
		i++
		return crun("run", "--bundle", filepath.Join(dir, "true"), fmt.Sprintf("floor-run-%d", i))
	}}
	// Detached, its sleep inherits crun's stdio: /dev/null, not a pipe nobody closes.
	detached := exec.Command("/usr/bin/crun", "--root", "/tmp/crun", "--cgroup-manager=disabled",
		"run", "-d", "--bundle", filepath.Join(dir, "sleep"), "floor-sleeper")
	if err := detached.Run(); err != nil {
		return nil, nil, fmt.Errorf("crun run -d: %w", err)
	}
	stop := func() {
		crun("kill", "floor-sleeper", "KILL")
		crun("delete", "-f", "floor-sleeper")
	}
	exec := op{"crun exec true into a running container", func() error { return crun("exec", "floor-sleeper", "true") }}
	// What its start alone costs: the dynamic loader linking its ten libraries.
	version := op{"fork+exec crun --version (dynamically linked, 10 libraries)", func() error { return runCmd(0, "/usr/bin/crun", "--version") }}
	return []op{version, run, exec}, stop, nil
}

// slowInits keeps the lines of a GODEBUG=inittrace=1 report whose package took 0.1 ms or
// more, and their sum.
func slowInits(report string) string {
	var b strings.Builder
	total := 0.0
	for _, l := range strings.Split(report, "\n") {
		// init github.com/x/y @1.2 ms, 0.31 ms clock, 1024 bytes, 12 allocs
		f := strings.Fields(l)
		if len(f) < 7 || f[0] != "init" || f[6] != "clock," {
			continue
		}
		var ms float64
		if _, err := fmt.Sscanf(f[4], "%f", &ms); err != nil {
			continue
		}
		total += ms
		if ms >= 0.1 {
			fmt.Fprintf(&b, "INIT %s\n", l)
		}
	}
	fmt.Fprintf(&b, "INIT all package inits of the agent binary: %.2f ms clock\n", total)
	return b.String()
}
