package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// The exec helper (cmd/runv-exec) itself, built with cc and run on the host against a
// process in namespaces of its own, as the agent runs it in the guest against a
// container's init: what the started process sees (namespaces, cgroup, user, groups,
// capabilities, no_new_privs, seccomp, rlimits, umask, cwd, env, terminal) and the errors
// of a process that cannot start.

// buildExecHelper compiles the helper as the Makefile does (cmd/runv-exec/build.sh), or
// skips with the reason.
func buildExecHelper(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the exec helper joins namespaces and changes credentials: needs root")
	}
	_, musl := exec.LookPath("musl-gcc")
	if _, cc := exec.LookPath("cc"); musl != nil && cc != nil {
		t.Skip("no C compiler (musl-gcc or cc) to build cmd/runv-exec")
	}
	out := filepath.Join(t.TempDir(), "runv-exec")
	if b, err := exec.Command("../cmd/runv-exec/build.sh", out).CombinedOutput(); err != nil {
		t.Fatalf("cmd/runv-exec/build.sh: %v\n%s", err, b)
	}
	return out
}

// execTarget is a process in new mount, UTS, IPC and pid namespaces (its hostname set),
// standing in for a container's init.
type execTarget struct {
	cmd *exec.Cmd
	ns  []nsFile
}

func startExecTarget(t *testing.T) *execTarget {
	return startExecTargetIn(t, "")
}

// startExecTargetIn starts the target in cgroup (a cgroup v2 directory) with a cgroup
// namespace of its own rooted there, as a container's init is; "": in the test's cgroup
// and cgroup namespace.
func startExecTargetIn(t *testing.T, cgroup string) *execTarget {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "hostname fastexec-target && echo ready && exec sleep 1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWPID}
	namespaces := []struct {
		name string
		t    uint32
	}{{"ipc", unix.CLONE_NEWIPC}, {"uts", unix.CLONE_NEWUTS}, {"pid", unix.CLONE_NEWPID}, {"mnt", unix.CLONE_NEWNS}}
	if cgroup != "" {
		cg, err := os.Open(cgroup)
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWCGROUP
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
		namespaces = append(namespaces, struct {
			name string
			t    uint32
		}{"cgroup", unix.CLONE_NEWCGROUP})
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the target: %v", err)
	}
	tg := &execTarget{cmd: cmd}
	t.Cleanup(func() {
		for _, ns := range tg.ns {
			ns.f.Close()
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("target did not start: %q %v", line, err)
	}
	for _, n := range namespaces {
		f, err := os.Open("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/" + n.name)
		if err != nil {
			t.Fatal(err)
		}
		tg.ns = append(tg.ns, nsFile{nstype: n.t, f: f})
	}
	return tg
}

// testCgroup is a cgroup v2 directory of its own for the test's processes, or "" (the
// helper then starts where the test runs).
func testCgroup(t *testing.T) (dir, rel string) {
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		rel = "/runv-fastexec-test-" + strconv.Itoa(os.Getpid())
		dir = root + rel
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Logf("no cgroup of the test's own: %v", err)
			return "", ""
		}
		t.Cleanup(func() { os.Remove(dir) })
		return dir, rel
	}
	return "", ""
}

// cgroupDirs is the cgroup the helper starts in: the test's own, or the one the test runs in.
func cgroupDirs(own string) []string {
	if own != "" {
		return []string{own}
	}
	self, _ := os.ReadFile("/proc/self/cgroup")
	for _, l := range strings.Split(string(self), "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
				var st unix.Statfs_t
				if unix.Statfs(root, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
					return []string{root + rest}
				}
			}
		}
	}
	return nil
}

// execEngine is one of the two ways the agent runs an exec through the helper: the
// one-shot helper (srv nil) or the target's exec server.
type execEngine struct {
	name string
	srv  *execServer
}

// engines are both ways into tg: the one-shot helper, and an exec server of tg's, started
// here and stopped when t ends.
func (tg *execTarget) engines(t *testing.T, helper string) []execEngine {
	t.Helper()
	srv, err := startExecServer(helper, tg.ns, nil)
	if err != nil {
		t.Fatalf("start the exec server: %v", err)
	}
	t.Cleanup(srv.stop)
	return []execEngine{{"one-shot helper", nil}, {"exec server", srv}}
}

// run starts req through the engine, with the given stdio and console socket.
func (e execEngine) run(helper string, tg *execTarget, req *convert.ExecRequest, stdio [3]*os.File, console *os.File, dirs []string) (*childProcess, error) {
	if e.srv != nil {
		return e.srv.exec(req, stdio, console, dirs, nil)
	}
	proc, _, err := runExecHelper(helper, req, stdio, tg.ns, console, nil, dirs, nil)
	return proc, err
}

// runHelper runs req in the target through the engine and returns the process's output
// and exit status.
func runHelper(t *testing.T, e execEngine, helper string, tg *execTarget, req *convert.ExecRequest, cgroup string) (string, int, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	proc, err := e.run(helper, tg, req, [3]*os.File{nil, w, w}, nil, cgroupDirs(cgroup))
	w.Close()
	if err != nil {
		return "", 0, err
	}
	out, _ := io.ReadAll(r)
	ws, err := proc.wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return string(out), ws.ExitStatus(), nil
}

func TestExecHelperStartsTheProcessAsAsked(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	cgroup, cgroupRel := testCgroup(t)
	caps := convert.CapSetsOf(&configs.Capabilities{
		Bounding: []string{"CAP_CHOWN", "CAP_KILL"}, Effective: []string{"CAP_KILL"},
		Permitted: []string{"CAP_KILL"}, Inheritable: []string{"CAP_KILL"}, Ambient: []string{"CAP_KILL"},
	})
	last, err := guestLastCap()
	if err != nil {
		t.Fatal(err)
	}
	umask := uint32(0o027)
	env, needHome, err := convert.PrepareExecEnv([]string{"PATH=/usr/bin:/bin", "FOO=a", "FOO=b", "HOME="})
	if err != nil || !needHome {
		t.Fatalf("convert.PrepareExecEnv: %v %v", err, needHome)
	}
	script := `echo "$(hostname) $(id -u):$(id -g) $(id -G) $(pwd) $HOME $FOO $(umask) $(ulimit -n)"
grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr '\t\n' '  '; echo
readlink /proc/self/ns/uts /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/ipc | tr '\n' ' '; echo
grep '^0::' /proc/self/cgroup`
	req := &convert.ExecRequest{
		UID: 1000, GID: 1001, Groups: []uint32{7, 1002}, Caps: caps, LastCap: last, NoNewPrivs: true,
		Rlimits: []configs.Rlimit{{Type: unix.RLIMIT_NOFILE, Soft: 123, Hard: 456}},
		Umask:   &umask, Cwd: "/tmp", Args: []string{"sh", "-c", script}, Env: env, LookupHome: true,
		Keyring: "_ses.fastexec-test",
	}
	for _, e := range tg.engines(t, helper) {
		t.Run(e.name, func(t *testing.T) {
			out, code, err := runHelper(t, e, helper, tg, req, cgroup)
			if err != nil || code != 0 {
				t.Fatalf("exec: code %d, %v\n%s", code, err, out)
			}
			lines := strings.Split(out, "\n")
			if len(lines) < 4 {
				t.Fatalf("output: %q", out)
			}
			// uid 1000 may have a passwd entry on the host: HOME is then its home.
			home := "/"
			if b, err := exec.Command("getent", "passwd", "1000").Output(); err == nil {
				if f := strings.Split(strings.TrimSpace(string(b)), ":"); len(f) > 5 {
					home = f[5]
				}
			}
			if want := "fastexec-target 1000:1001 1001 7 1002 /tmp " + home + " b 0027 123"; lines[0] != want {
				t.Errorf("identity line %q, want %q", lines[0], want)
			}
			for _, want := range []string{"CapEff: 0000000000000020", "CapPrm: 0000000000000020", "CapBnd: 0000000000000021", "CapAmb: 0000000000000020", "NoNewPrivs: 1", "Seccomp: 0"} {
				if !strings.Contains(lines[1], want) {
					t.Errorf("status %q lacks %q", lines[1], want)
				}
			}
			var targetNS []string
			for _, n := range []string{"uts", "pid", "mnt", "ipc"} {
				l, _ := os.Readlink("/proc/" + strconv.Itoa(tg.cmd.Process.Pid) + "/ns/" + n)
				targetNS = append(targetNS, l)
			}
			if got, want := strings.TrimSpace(lines[2]), strings.Join(targetNS, " "); got != want {
				t.Errorf("namespaces %q, want the target's %q", got, want)
			}
			if cgroupRel != "" && lines[3] != "0::"+cgroupRel {
				t.Errorf("cgroup %q, want 0::%s", lines[3], cgroupRel)
			}
		})
	}
}

func TestExecHelperLoadsSeccompLast(t *testing.T) {
	if convert.SyscallNumber == nil {
		t.Skip("built without libseccomp (the agent's seccomp tag): go test -tags seccomp")
	}
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	eperm := uint(unix.EPERM)
	// What a profile does to the process: mkdir is refused; everything else (the helper's
	// own setuid, capset... included) allowed.
	prog, flags, err := compileSeccomp(&configs.Seccomp{
		DefaultAction: configs.Allow, Architectures: []string{"amd64"},
		Syscalls: []*configs.Syscall{{Name: "mkdir", Action: configs.Errno, ErrnoRet: &eperm}, {Name: "mkdirat", Action: configs.Errno, ErrnoRet: &eperm}},
	})
	if err != nil {
		t.Fatalf("compileSeccomp: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/status", &st); err != nil {
		t.Fatal(err)
	}
	self, _ := os.ReadFile("/proc/thread-self/status")
	if !strings.Contains(string(self), "Seccomp:\t0") {
		t.Fatalf("compiling the profile loaded a filter into this thread:\n%s", self)
	}
	for _, e := range tg.engines(t, helper) {
		t.Run(e.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, nnp := range []bool{true, false} {
				req := &convert.ExecRequest{
					NoNewPrivs: nnp, Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}, Seccomp: prog, SeccompFlags: flags,
					Args: []string{"sh", "-c", "grep ^Seccomp: /proc/self/status; mkdir " + dir + "/x 2>&1 || echo refused"},
				}
				out, code, err := runHelper(t, e, helper, tg, req, "")
				if err != nil || code != 0 {
					t.Fatalf("nnp=%v: code %d, %v\n%s", nnp, code, err, out)
				}
				if !strings.Contains(out, "Seccomp:\t2") || !strings.Contains(out, "refused") {
					t.Errorf("nnp=%v: the filter is not in force: %q", nnp, out)
				}
			}
			if _, err := os.Stat(dir + "/x"); err == nil {
				t.Error("mkdir went through")
			}
		})
	}
}

// A profile older than faccessat2 answers it ENOSYS (libcontainer's stub for unknown
// syscalls). Without no_new_privs the filter is in force before the program is looked up:
// the lookup's access check must still find it (glibc falls back to faccessat, which has
// no AT_EMPTY_PATH: the helper once asked for that and got EINVAL).
func TestExecHelperLookupUnderOldSeccompProfile(t *testing.T) {
	if convert.SyscallNumber == nil {
		t.Skip("built without libseccomp (the agent's seccomp tag): go test -tags seccomp")
	}
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	enosys := uint(unix.ENOSYS)
	prog, flags, err := compileSeccomp(&configs.Seccomp{
		DefaultAction: configs.Allow, Architectures: []string{"amd64"},
		Syscalls: []*configs.Syscall{{Name: "faccessat2", Action: configs.Errno, ErrnoRet: &enosys}},
	})
	if err != nil {
		t.Fatalf("compileSeccomp: %v", err)
	}
	for _, e := range tg.engines(t, helper) {
		t.Run(e.name, func(t *testing.T) {
			for _, argv0 := range []string{"sh", "/bin/sh"} {
				req := &convert.ExecRequest{Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}, Seccomp: prog, SeccompFlags: flags,
					Args: []string{argv0, "-c", "echo ran"}}
				out, code, err := runHelper(t, e, helper, tg, req, "")
				if err != nil || code != 0 || !strings.Contains(out, "ran") {
					t.Errorf("%s under a profile refusing faccessat2: code %d, %v, output %q", argv0, code, err, out)
				}
			}
		})
	}
}

// A profile like podman's and docker's (more than 32 rules, so libseccomp optimises; a
// flag, so libcontainer loads with a raw seccomp(2)), compiled again and again in one
// process with one P, as in a guest of one vCPU, with garbage collections going on: each
// compile's catcher thread must not hold up the next or the runtime, nor a filter reach
// this thread.
func TestCompileSeccompRepeatedly(t *testing.T) {
	if convert.SyscallNumber == nil {
		t.Skip("built without libseccomp (the agent's seccomp tag): go test -tags seccomp")
	}
	if os.Geteuid() != 0 {
		t.Skip("installing the catcher filter without no_new_privs needs CAP_SYS_ADMIN: needs root")
	}
	eperm := uint(unix.EPERM)
	cfg := &configs.Seccomp{DefaultAction: configs.Errno, DefaultErrnoRet: &eperm, Architectures: []string{"amd64", "x86", "x32"},
		Flags: []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagSpecAllow}}
	for _, name := range []string{"read", "write", "openat", "close", "fstat", "mmap", "mprotect", "munmap", "brk", "rt_sigaction",
		"rt_sigprocmask", "ioctl", "pread64", "pwrite64", "readv", "writev", "access", "pipe", "select", "sched_yield", "mremap",
		"msync", "mincore", "madvise", "dup", "dup2", "nanosleep", "getpid", "socket", "connect", "exit", "exit_group", "execve",
		"wait4", "kill", "uname", "fcntl", "getcwd", "chdir", "setuid", "setgid", "capset", "prctl"} {
		cfg.Syscalls = append(cfg.Syscalls, &configs.Syscall{Name: name, Action: configs.Allow})
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	// Garbage collections all along: a stop-the-world while the catcher's thread waits in
	// its syscall must not wedge the process.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	}()
	for i := 0; i < 20; i++ {
		prog, flags, err := compileSeccomp(cfg)
		if err != nil {
			t.Fatalf("compile %d: %v", i, err)
		}
		if flags != unix.SECCOMP_FILTER_FLAG_SPEC_ALLOW || len(prog) == 0 || len(prog)%8 != 0 {
			t.Fatalf("compile %d: %d bytes, flags %#x", i, len(prog), flags)
		}
	}
	// No thread keeps a filter: the catchers' threads end with their goroutines, right
	// after each compile, and none may be the main thread (Go parks that one for good).
	deadline := time.Now().Add(10 * time.Second)
	for {
		filtered := filteredThreads(t)
		if len(filtered) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: threads still carrying a seccomp filter after the compiles: %s", os.Getpid(), strings.Join(filtered, " "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// filteredThreads lists the status files of this process's threads that carry a seccomp
// filter.
func filteredThreads(t *testing.T) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads listed: %v", err)
	}
	var filtered []string
	for _, status := range tasks {
		b, err := os.ReadFile(status)
		if err != nil {
			continue // a thread that ended meanwhile
		}
		if !strings.Contains(string(b), "\nSeccomp:\t0\n") {
			filtered = append(filtered, status)
		}
	}
	return filtered
}

func TestExecHelperReportsWhatFailed(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	exe := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, e := range tg.engines(t, helper) {
		t.Run(e.name, func(t *testing.T) {
			for _, tc := range []struct {
				name     string
				req      convert.ExecRequest
				wantKind string
				want     string
			}{
				{"missing program", convert.ExecRequest{Args: []string{"/no/such/program"}}, agentproto.KindNotExecutable, `exec: "/no/such/program": executable file not found`},
				{"not in PATH", convert.ExecRequest{Args: []string{"no-such-command"}, Env: []string{"PATH=/bin"}}, agentproto.KindNotExecutable, "executable file not found in $PATH"},
				{"no PATH", convert.ExecRequest{Args: []string{"true"}}, agentproto.KindNotExecutable, "executable file not found in $PATH"},
				{"not executable", convert.ExecRequest{Args: []string{exe}}, agentproto.KindNotExecutable, "permission denied"},
				{"a directory", convert.ExecRequest{Args: []string{"/tmp"}}, agentproto.KindNotExecutable, "is a directory"},
				{"missing cwd", convert.ExecRequest{Args: []string{"/bin/true"}, Cwd: "/no/such/dir"}, "", "chdir to cwd (/no/such/dir)"},
				{"bad capability set", convert.ExecRequest{Args: []string{"/bin/true"}, Caps: &convert.CapSets{Effective: 1}, LastCap: 40}, "", "set capabilities: operation not permitted"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					req := tc.req
					if req.Cwd == "" {
						req.Cwd = "/"
					}
					_, _, err := runHelper(t, e, helper, tg, &req, "")
					if err == nil {
						t.Fatal("started")
					}
					// startProcess classifies errors as it does libcontainer's.
					if _, cerr, ok := classifyStartError(err); ok {
						err = cerr
					}
					if kindOf(err) != tc.wantKind || !strings.Contains(err.Error(), tc.want) {
						t.Fatalf("error %q (kind %q), want kind %q and %q", err, kindOf(err), tc.wantKind, tc.want)
					}
				})
			}
		})
	}
}

func TestExecHelperTerminal(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	for _, e := range tg.engines(t, helper) {
		t.Run(e.name, func(t *testing.T) {
			parent, child, err := socketPair()
			if err != nil {
				t.Fatal(err)
			}
			defer parent.Close()
			req := &convert.ExecRequest{Cwd: "/", Rows: 25, Cols: 100, Env: []string{"PATH=/usr/bin:/bin"},
				Args: []string{"sh", "-c", "tty; stty size; [ -t 0 ] && echo stdin-is-a-tty"}}
			proc, err := e.run(helper, tg, req, [3]*os.File{}, child, cgroupDirs(""))
			child.Close()
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			master, err := recvFd(parent)
			if err != nil {
				t.Fatalf("receive the terminal: %v", err)
			}
			defer master.Close()
			master.SetReadDeadline(time.Now().Add(30 * time.Second))
			var out []byte
			buf := make([]byte, 1024)
			for {
				n, err := master.Read(buf)
				out = append(out, buf[:n]...)
				if err != nil {
					if !errors.Is(err, syscall.EIO) {
						t.Errorf("read the terminal: %v", err)
					}
					break
				}
			}
			if ws, err := proc.wait(); err != nil || ws.ExitStatus() != 0 {
				t.Fatalf("exit %s %v: %q", waitStatusText(ws), err, out)
			}
			text := strings.ReplaceAll(string(out), "\r", "")
			for _, want := range []string{"/dev/pts/", "25 100", "stdin-is-a-tty"} {
				if !strings.Contains(text, want) {
					t.Errorf("terminal output %q lacks %q", text, want)
				}
			}
		})
	}
}

func socketPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "parent"), os.NewFile(uintptr(fds[1]), "child"), nil
}

// The exec server stays out of the container (the test's pid namespace and cgroup, its
// children's pid namespace the target's), serves execs one after another and at once,
// refuses cleanly once the target's init is gone, and ends when its socket is closed.
func TestExecServerLifecycle(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	cgroup, cgroupRel := testCgroup(t)
	srv, err := startExecServer(helper, tg.ns, nil)
	if err != nil {
		t.Fatalf("start the exec server: %v", err)
	}
	defer srv.stop()
	ns := func(pid int, name string) string {
		l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	target := tg.cmd.Process.Pid
	if got, want := ns(srv.pid, "pid"), ns(os.Getpid(), "pid"); got != want {
		t.Errorf("the server is in pid namespace %s, want the agent's %s", got, want)
	}
	for _, name := range []string{"mnt", "uts", "ipc"} {
		if got, want := ns(srv.pid, name), ns(target, name); got != want {
			t.Errorf("the server's %s namespace %s, want the target's %s", name, got, want)
		}
	}
	if got, want := ns(srv.pid, "pid_for_children"), ns(target, "pid"); got != want {
		t.Errorf("the server's children go to pid namespace %s, want the target's %s", got, want)
	}
	if cgroupRel != "" {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(srv.pid) + "/cgroup")
		if strings.Contains(string(b), cgroupRel) {
			t.Errorf("the server is in the container's cgroup: %s", b)
		}
	}

	e := execEngine{"exec server", srv}
	req := func(script string) *convert.ExecRequest {
		return &convert.ExecRequest{Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}, Args: []string{"sh", "-c", script}}
	}
	for i := 0; i < 3; i++ {
		if out, code, err := runHelper(t, e, helper, tg, req("echo $$"), cgroup); err != nil || code != 0 || strings.TrimSpace(out) == "" {
			t.Fatalf("exec %d: code %d, %v, %q", i, code, err, out)
		}
	}
	const parallel = 4
	errs := make(chan error, parallel)
	for i := 0; i < parallel; i++ {
		go func() {
			out, code, err := runHelper(t, e, helper, tg, req("echo ran"), cgroup)
			if err == nil && (code != 0 || out != "ran\n") {
				err = fmt.Errorf("code %d, output %q", code, out)
			}
			errs <- err
		}()
	}
	for i := 0; i < parallel; i++ {
		if err := <-errs; err != nil {
			t.Errorf("concurrent exec: %v", err)
		}
	}

	// The target's init gone, its pid namespace is dead: an exec fails, and says why.
	tg.cmd.Process.Kill()
	tg.cmd.Wait()
	done := make(chan error, 1)
	go func() {
		_, _, err := runHelper(t, e, helper, tg, req("true"), cgroup)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "fork into the container's cgroup") {
			t.Errorf("exec into a dead pid namespace: %v, want the server's fork error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("exec into a dead pid namespace hangs")
	}

	// A container with a cgroup namespace of its own, rooted at its cgroup: the process
	// forked into that cgroup joins it. (The server cannot join it: with the guest's
	// nsdelegate, a fork into a cgroup from inside a cgroup namespace that does not hold
	// the forking process's own cgroup fails with ENOENT; the host's hierarchy may not have
	// nsdelegate, the VM tests' containers do.)
	if cgroup != "" {
		inNS := startExecTargetIn(t, cgroup)
		srv2, err := startExecServer(helper, inNS.ns, nil)
		if err != nil {
			t.Fatalf("start an exec server for a container with a cgroup namespace: %v", err)
		}
		defer srv2.stop()
		out, code, err := runHelper(t, execEngine{"exec server", srv2}, helper, inNS, req("readlink /proc/self/ns/cgroup; grep ^0:: /proc/self/cgroup"), cgroup)
		want, _ := os.Readlink("/proc/" + strconv.Itoa(inNS.cmd.Process.Pid) + "/ns/cgroup")
		if err != nil || code != 0 || out != want+"\n0::/\n" {
			t.Errorf("exec into a cgroup namespace: code %d, %v, output %q, want %q", code, err, out, want+"\n0::/\n")
		}
	}

	srv.stop()
	select {
	case <-srv.exited:
	default:
		t.Fatal("stop returned before the server exited")
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(srv.pid)); err == nil {
		t.Errorf("server %d still exists after stop", srv.pid)
	}
	if _, err := srv.exec(req("true"), [3]*os.File{}, nil, cgroupDirs(cgroup), nil); !errors.Is(err, errServerGone) {
		t.Errorf("exec through a stopped server: %v, want errServerGone", err)
	}
}

// The host's hint of where the program is (ExecProcess.ProgramHint) is tried first and
// taken if it qualifies as the search would take it; else the PATH is searched as usual.
func TestExecHelperProgramHint(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"hello": 0o755, "plain": 0o644} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\necho from the hint\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range tg.engines(t, helper) {
		t.Run(e.name, func(t *testing.T) {
			for _, tc := range []struct {
				name, argv0, hint, want string
			}{
				// The hint is outside the PATH here only to show that it is the one run.
				{"taken", "hello", dir + "/hello", "from the hint"},
				{"missing: searched", "sh", dir + "/sh", "from the search"},
				{"not executable: searched", "sh", dir + "/plain", "from the search"},
				{"a path is never hinted", "/bin/sh", dir + "/hello", "from the search"},
			} {
				req := &convert.ExecRequest{Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}, ProgramHint: tc.hint,
					Args: []string{tc.argv0, "-c", "echo from the search"}}
				out, code, err := runHelper(t, e, helper, tg, req, "")
				if err != nil || code != 0 || strings.TrimSpace(out) != tc.want {
					t.Errorf("%s: code %d, %v, output %q, want %q", tc.name, code, err, out, tc.want)
				}
			}
		})
	}
}
