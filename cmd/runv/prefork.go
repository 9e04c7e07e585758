package main

// A `runv run` starts the pod daemon of a new pod sooner than it could exec it (after its
// own Go start and the bundle): a C constructor (runv is a cgo binary; a process is
// single-threaded until Go's runtime starts) forks at once and the child execs
// `runv <the CLI's global flags> containerd --solo-namespaced --preforked FD`. That daemon's
// exec, Go start and package inits (3-4 ms, docs/performance.md, "The host's share, stop
// 16") then run on the other core while the CLI starts and reads the bundle; it waits on the
// socket FD for its real command line and descriptors (preforkedDaemonArgs). A daemon the
// CLI does not use (the container joins a pod, the command fails) sees the socket close and
// exits, and the CLI waits for that before it exits. RUNV_NO_PREFORK=1 turns it off.

/*
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

// RUNV_PREFORKED ends a preforked daemon's command line, before its socket's descriptor
// (preforkedFlag on the Go side).
#define RUNV_PREFORKED "--preforked"

static int runv_prefork_fd = -1;   // the CLI's end of the socket to the preforked daemon
static pid_t runv_prefork_pid = 0; // the preforked daemon's pid

// runv's global flags that take no value (urfave/cli's own among them); every other flag
// before the command takes one, unless written --flag=value.
static int runv_bool_flag(const char *a) {
	while (*a == '-') a++;
	return !strcmp(a, "debug") || !strcmp(a, "systemd-cgroup") || !strcmp(a, "help") ||
		!strcmp(a, "h") || !strcmp(a, "version") || !strcmp(a, "v");
}

// runv_command returns the index in argv of the command word: the first argument that is
// neither a global flag nor a flag's value; argc if there is none.
static int runv_command(int argc, char **argv) {
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-') return i;
		if (!strcmp(a, "--")) return argc;
		if (!strchr(a, '=') && !runv_bool_flag(a)) i++;
	}
	return argc;
}

// runv_name_preforked_daemon gives a preforked daemon (its command line ends in
// --preforked FD) the name of the binary it was started as: exec'd through /proc/self/exe,
// it would be "exe" in ps, top and pgrep. Here, before Go's runtime, this is the main
// thread, whose name is the process's.
static void runv_name_preforked_daemon(int argc, char **argv) {
	if (argc < 2 || strcmp(argv[argc - 2], RUNV_PREFORKED)) return;
	const char *base = strrchr(argv[0], '/');
	prctl(PR_SET_NAME, base != NULL ? base + 1 : argv[0], 0, 0, 0);
}

__attribute__((constructor)) static void runv_prefork(int argc, char **argv, char **envp) {
	runv_name_preforked_daemon(argc, argv);
	int cmd = runv_command(argc, argv);
	const char *off = getenv("RUNV_NO_PREFORK");
	if (cmd >= argc || strcmp(argv[cmd], "run") || (off != NULL && *off != '\0' && strcmp(off, "0")))
		return;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return;
	pid_t pid = fork();
	if (pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return;
	}
	if (pid == 0) {
		close(sv[0]);
		fcntl(sv[1], F_SETFD, 0);
		char fd[16];
		snprintf(fd, sizeof fd, "%d", sv[1]);
		char **args = calloc(cmd + 5, sizeof *args);
		if (args == NULL) _exit(0);
		for (int i = 0; i < cmd; i++) args[i] = argv[i];
		args[cmd] = "containerd";
		args[cmd + 1] = "--solo-namespaced";
		args[cmd + 2] = RUNV_PREFORKED;
		args[cmd + 3] = fd;
		execve("/proc/self/exe", args, envp);
		_exit(0); // the CLI finds the socket closed and execs the daemon itself
	}
	close(sv[1]);
	runv_prefork_fd = sv[0];
	runv_prefork_pid = pid;
}

static int runv_prefork_get_fd(void) { return runv_prefork_fd; }
static pid_t runv_prefork_get_pid(void) { return runv_prefork_pid; }
static void runv_prefork_forget(void) { runv_prefork_fd = -1; runv_prefork_pid = 0; }
*/
import "C"

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// preforkTakesNoValue is the constructor's own rule (runv_bool_flag) for a global flag
// written without "=value": true when the next argument is not its value. Only for the test
// that keeps it in step with globalFlags.
func preforkTakesNoValue(flag string) bool {
	cs := C.CString(flag)
	defer C.free(unsafe.Pointer(cs))
	return C.runv_bool_flag(cs) != 0
}

// preforkedFlag ends a preforked daemon's command line, with its socket's descriptor: the
// constructor's own (RUNV_PREFORKED), which it forks the daemon with and names it by.
const preforkedFlag = C.RUNV_PREFORKED

// maxDaemonArgs bounds the daemon's command line as sent (its paths and flags).
const maxDaemonArgs = 1 << 16

// fdFlags are the daemon's flags whose value is a descriptor it inherits (startDaemon's
// extra files).
var fdFlags = []string{"--ready-fd", "--vm-fd"}

// firstExtraFD is the number an exec'd daemon's first inherited descriptor gets (exec.Cmd's
// ExtraFiles are 3, 4, ...): the CLI's command line names the descriptors so, whichever
// way the daemon is started.
const firstExtraFD = 3

// withReceivedFDs rewrites, in a preforked daemon's command line, the value of each of
// fdFlags (--flag N or --flag=N, N as an exec'd daemon would number the descriptor) to the
// number the descriptor got here, received[N-firstExtraFD]: by value, so that a command
// line with only some of the flags, or with them in another order, names the right ones.
// A value that names no received descriptor is an error.
func withReceivedFDs(args []string, received []int) ([]string, error) {
	out := append([]string(nil), args...)
	for i := 0; i < len(out); i++ {
		flag, value, inline := fdFlagIn(out[i])
		if flag == "" {
			continue
		}
		if !inline {
			if i+1 == len(out) {
				return nil, fmt.Errorf("%s without a value", flag)
			}
			i++
			value = out[i]
		}
		n, err := strconv.Atoi(value)
		if err != nil || n < firstExtraFD || n-firstExtraFD >= len(received) {
			return nil, fmt.Errorf("%s %q names none of the %d descriptors the runv that forked us sent", flag, value, len(received))
		}
		if out[i] = strconv.Itoa(received[n-firstExtraFD]); inline {
			out[i] = flag + "=" + out[i]
		}
	}
	return out, nil
}

// fdFlagIn reports which of fdFlags arg is ("" if none), and its value when written
// --flag=value (inline).
func fdFlagIn(arg string) (flag, value string, inline bool) {
	for _, f := range fdFlags {
		if arg == f {
			return f, "", false
		}
		if v, ok := strings.CutPrefix(arg, f+"="); ok {
			return f, v, true
		}
	}
	return "", "", false
}

// preforkedDaemonArgs is, in a daemon forked by the constructor above (its command line
// ends in --preforked FD), the command line the CLI sent, with the descriptors it sent in
// place of fdFlags' values, its log as stdout and stderr, /dev/null as stdin, a session of
// its own and / as its directory. ok is false in any other runv process. An error: the CLI
// did not use it, or could not; the caller exits.
func preforkedDaemonArgs(args []string) (daemonArgs []string, ok bool, err error) {
	if len(args) < 2 || args[len(args)-2] != preforkedFlag {
		return nil, false, nil
	}
	fd, err := strconv.Atoi(args[len(args)-1])
	if err != nil {
		return nil, true, fmt.Errorf("%s %q: %w", preforkedFlag, args[len(args)-1], err)
	}
	defer unix.Close(fd)
	unix.CloseOnExec(fd)
	msg := make([]byte, 4+maxDaemonArgs)
	oob := make([]byte, unix.CmsgSpace(4*(1+len(fdFlags))))
	n, oobn, _, _, err := unix.Recvmsg(fd, msg, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil || n < 4 {
		return nil, true, fmt.Errorf("no command line from the runv that forked us: %v", err)
	}
	fds, err := receivedFDs(oob[:oobn])
	if err != nil || len(fds) < 2 {
		return nil, true, fmt.Errorf("descriptors from the runv that forked us: %d, %v", len(fds), err)
	}
	size := int(binary.LittleEndian.Uint32(msg))
	if size >= maxDaemonArgs {
		return nil, true, fmt.Errorf("a command line of %d bytes", size)
	}
	for n < 4+size {
		m, err := unix.Read(fd, msg[n:4+size])
		if err != nil || m == 0 {
			return nil, true, fmt.Errorf("command line cut short: %v", err)
		}
		n += m
	}
	for _, a := range bytes.Split(msg[4:4+size], []byte{0}) {
		daemonArgs = append(daemonArgs, string(a))
	}
	logFD, inherited := fds[0], fds[1:]
	if daemonArgs, err = withReceivedFDs(daemonArgs, inherited); err != nil {
		// Said in the log, whose end the CLI quotes when the daemon exits without a word.
		unix.Write(logFD, []byte("runv: "+err.Error()+"\n"))
		return nil, true, err
	}
	null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, err
	}
	for _, d := range [][2]int{{null, 0}, {logFD, 1}, {logFD, 2}} {
		if err := unix.Dup2(d[0], d[1]); err != nil {
			return nil, true, err
		}
	}
	unix.Close(null)
	unix.Close(logFD)
	if _, err := unix.Setsid(); err != nil {
		return nil, true, err
	}
	if err := unix.Chdir("/"); err != nil {
		return nil, true, err
	}
	return daemonArgs, true, nil
}

func receivedFDs(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		f, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return nil, err
		}
		fds = append(fds, f...)
	}
	return fds, nil
}

// errNoPreforkedDaemon: this runv has no preforked daemon (any more), or could not hand it
// its command line.
var errNoPreforkedDaemon = errors.New("no preforked pod daemon")

// startPreforkedDaemon hands args (the daemon's command line, args[0] the binary), its log
// and its inherited descriptors (those of fdFlags, in order) to the preforked daemon, and
// returns its pid. On an error the daemon, if any, is gone when it returns.
func startPreforkedDaemon(args []string, log *os.File, inherited []*os.File) (int, error) {
	fd, pid := int(C.runv_prefork_get_fd()), int(C.runv_prefork_get_pid())
	if fd < 0 || pid == 0 {
		return 0, errNoPreforkedDaemon
	}
	if err := handOver(fd, args, log, inherited); err != nil {
		releasePreforkedDaemon()
		return 0, fmt.Errorf("%w: %w", errNoPreforkedDaemon, err)
	}
	C.runv_prefork_forget()
	unix.Close(fd)
	return pid, nil
}

func handOver(fd int, args []string, log *os.File, inherited []*os.File) error {
	if len(inherited) > len(fdFlags) {
		return fmt.Errorf("%d descriptors for a pod daemon", len(inherited))
	}
	var msg bytes.Buffer
	msg.Write([]byte{0, 0, 0, 0})
	for i, a := range args {
		if i > 0 {
			msg.WriteByte(0)
		}
		msg.WriteString(a)
	}
	b := msg.Bytes()
	if len(b)-4 >= maxDaemonArgs {
		return fmt.Errorf("a pod daemon command line of %d bytes", len(b)-4)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	fds := []int{int(log.Fd())}
	for _, f := range inherited {
		fds = append(fds, int(f.Fd()))
	}
	if err := unix.Sendmsg(fd, b, unix.UnixRights(fds...), nil, 0); err != nil {
		return fmt.Errorf("hand the pod daemon its command line: %w", err)
	}
	return nil
}

// preforkedExitTimeout bounds the wait for an unused preforked daemon's exit (its Go start
// and a read that finds its socket closed: a few ms).
const preforkedExitTimeout = 5 * time.Second

// releasePreforkedDaemon ends a preforked daemon that was not used, and returns once it is
// gone (nothing of a `runv run` outlives it but a pod daemon it started).
func releasePreforkedDaemon() {
	fd, pid := int(C.runv_prefork_get_fd()), int(C.runv_prefork_get_pid())
	if fd < 0 {
		return
	}
	C.runv_prefork_forget()
	unix.Close(fd) // it reads EOF, and exits
	exited := make(chan struct{})
	go func() {
		reap(pid)
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(preforkedExitTimeout):
		unix.Kill(pid, unix.SIGKILL)
		<-exited
	}
}

// reap waits for our child pid to end.
func reap(pid int) {
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}
