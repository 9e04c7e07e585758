package agent

import (
	"errors"
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
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "hostname fastexec-target && echo ready && exec sleep 1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWPID}
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
	for _, n := range []struct {
		name string
		t    uint32
	}{{"ipc", unix.CLONE_NEWIPC}, {"uts", unix.CLONE_NEWUTS}, {"pid", unix.CLONE_NEWPID}, {"mnt", unix.CLONE_NEWNS}} {
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

// runHelper runs req in the target and returns the process's output and exit status.
func runHelper(t *testing.T, helper string, tg *execTarget, req *execRequest, cgroup string) (string, int, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	proc, _, err := runExecHelper(helper, req, [3]*os.File{nil, w, w}, tg.ns, nil, nil, cgroupDirs(cgroup), nil)
	w.Close()
	if err != nil {
		return "", 0, err
	}
	out, _ := io.ReadAll(r)
	st, err := proc.Wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return string(out), st.ExitCode(), nil
}

func TestExecHelperStartsTheProcessAsAsked(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	cgroup, cgroupRel := testCgroup(t)
	caps, last, err := capsFor(&configs.Capabilities{
		Bounding: []string{"CAP_CHOWN", "CAP_KILL"}, Effective: []string{"CAP_KILL"},
		Permitted: []string{"CAP_KILL"}, Inheritable: []string{"CAP_KILL"}, Ambient: []string{"CAP_KILL"},
	})
	if err != nil {
		t.Fatal(err)
	}
	umask := uint32(0o027)
	env, needHome, err := prepareExecEnv([]string{"PATH=/usr/bin:/bin", "FOO=a", "FOO=b", "HOME="})
	if err != nil || !needHome {
		t.Fatalf("prepareExecEnv: %v %v", err, needHome)
	}
	script := `echo "$(hostname) $(id -u):$(id -g) $(id -G) $(pwd) $HOME $FOO $(umask) $(ulimit -n)"
grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr '\t\n' '  '; echo
readlink /proc/self/ns/uts /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/ipc | tr '\n' ' '; echo
grep '^0::' /proc/self/cgroup`
	req := &execRequest{
		uid: 1000, gid: 1001, groups: []uint32{7, 1002}, caps: caps, lastCap: last, noNewPrivs: true,
		rlimits: []configs.Rlimit{{Type: unix.RLIMIT_NOFILE, Soft: 123, Hard: 456}},
		umask:   &umask, cwd: "/tmp", args: []string{"sh", "-c", script}, env: env, lookupHome: true,
		keyring: "_ses.fastexec-test",
	}
	out, code, err := runHelper(t, helper, tg, req, cgroup)
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
}

func TestExecHelperLoadsSeccompLast(t *testing.T) {
	if syscallNumber == nil {
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
	dir := t.TempDir()
	for _, nnp := range []bool{true, false} {
		req := &execRequest{
			noNewPrivs: nnp, cwd: "/", env: []string{"PATH=/usr/bin:/bin"}, seccomp: prog, seccompFlags: flags,
			args: []string{"sh", "-c", "grep ^Seccomp: /proc/self/status; mkdir " + dir + "/x 2>&1 || echo refused"},
		}
		out, code, err := runHelper(t, helper, tg, req, "")
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
}

// A profile older than faccessat2 answers it ENOSYS (libcontainer's stub for unknown
// syscalls). Without no_new_privs the filter is in force before the program is looked up:
// the lookup's access check must still find it (glibc falls back to faccessat, which has
// no AT_EMPTY_PATH: the helper once asked for that and got EINVAL).
func TestExecHelperLookupUnderOldSeccompProfile(t *testing.T) {
	if syscallNumber == nil {
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
	for _, argv0 := range []string{"sh", "/bin/sh"} {
		req := &execRequest{cwd: "/", env: []string{"PATH=/usr/bin:/bin"}, seccomp: prog, seccompFlags: flags,
			args: []string{argv0, "-c", "echo ran"}}
		out, code, err := runHelper(t, helper, tg, req, "")
		if err != nil || code != 0 || !strings.Contains(out, "ran") {
			t.Errorf("%s under a profile refusing faccessat2: code %d, %v, output %q", argv0, code, err, out)
		}
	}
}

// A profile like podman's and docker's (more than 32 rules, so libseccomp optimises; a
// flag, so libcontainer loads with a raw seccomp(2)), compiled again and again in one
// process with one P, as in a guest of one vCPU, with garbage collections going on: each
// compile's catcher thread must not hold up the next or the runtime, nor a filter reach
// this thread.
func TestCompileSeccompRepeatedly(t *testing.T) {
	if syscallNumber == nil {
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
	for _, tc := range []struct {
		name     string
		req      execRequest
		wantKind string
		want     string
	}{
		{"missing program", execRequest{args: []string{"/no/such/program"}}, agentproto.KindNotExecutable, `exec: "/no/such/program": executable file not found`},
		{"not in PATH", execRequest{args: []string{"no-such-command"}, env: []string{"PATH=/bin"}}, agentproto.KindNotExecutable, "executable file not found in $PATH"},
		{"no PATH", execRequest{args: []string{"true"}}, agentproto.KindNotExecutable, "executable file not found in $PATH"},
		{"not executable", execRequest{args: []string{exe}}, agentproto.KindNotExecutable, "permission denied"},
		{"a directory", execRequest{args: []string{"/tmp"}}, agentproto.KindNotExecutable, "is a directory"},
		{"missing cwd", execRequest{args: []string{"/bin/true"}, cwd: "/no/such/dir"}, "", "chdir to cwd (/no/such/dir)"},
		{"bad capability set", execRequest{args: []string{"/bin/true"}, caps: &capSets{effective: 1}, lastCap: 40}, "", "set capabilities: operation not permitted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			if req.cwd == "" {
				req.cwd = "/"
			}
			_, _, err := runHelper(t, helper, tg, &req, "")
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
}

func TestExecHelperTerminal(t *testing.T) {
	helper := buildExecHelper(t)
	tg := startExecTarget(t)
	parent, child, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	req := &execRequest{cwd: "/", rows: 25, cols: 100, env: []string{"PATH=/usr/bin:/bin"},
		args: []string{"sh", "-c", "tty; stty size; [ -t 0 ] && echo stdin-is-a-tty"}}
	proc, _, err := runExecHelper(helper, req, [3]*os.File{}, tg.ns, child, nil, cgroupDirs(""), nil)
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
	if st, err := proc.Wait(); err != nil || st.ExitCode() != 0 {
		t.Fatalf("exit %v %v: %q", st, err, out)
	}
	text := strings.ReplaceAll(string(out), "\r", "")
	for _, want := range []string{"/dev/pts/", "25 100", "stdin-is-a-tty"} {
		if !strings.Contains(text, want) {
			t.Errorf("terminal output %q lacks %q", text, want)
		}
	}
}

func socketPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "parent"), os.NewFile(uintptr(fds[1]), "child"), nil
}
