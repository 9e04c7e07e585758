package agent

/*
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

// The catcher's answering side, a thread outside the Go scheduler: the thread it answers
// blocks in its syscall while it holds a Go P (libcontainer loads with a raw syscall when a
// profile has flags), so a goroutine could wait behind that P, or behind a stop-the-world
// that waits for it, for ever.
struct runv_catch {
	int fd;
	int stop;
	unsigned char *prog;
	int prog_len;
	unsigned int flags;
	int err;
	pthread_t thread;
};

static void *runv_catch_loop(void *arg)
{
	struct runv_catch *c = arg;
	while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		if (poll(&p, 1, 5) <= 0 || !(p.revents & POLLIN))
			continue;
		struct seccomp_notif req;
		memset(&req, 0, sizeof(req));
		if (ioctl(c->fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
			if (errno != ENOENT && errno != EINTR)
				c->err = errno;
			continue;
		}
		struct seccomp_notif_resp resp;
		memset(&resp, 0, sizeof(resp));
		resp.id = req.id;
		// The caller's struct sock_fprog, in this process, valid while it waits.
		const struct sock_fprog *fp = (const struct sock_fprog *)(uintptr_t)req.data.args[2];
		if (fp == NULL) {
			// libseccomp probing the kernel: let the kernel answer.
			resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
		} else {
			if (c->prog == NULL && fp->len > 0 && fp->len <= BPF_MAXINSNS) {
				size_t n = fp->len * sizeof(struct sock_filter);
				c->prog = malloc(n);
				if (c->prog != NULL) {
					memcpy(c->prog, fp->filter, n);
					c->prog_len = (int)n;
					if (req.data.nr == __NR_seccomp)
						c->flags = (unsigned int)req.data.args[1];
				}
			}
			resp.error = -ECANCELED; // nothing is loaded
		}
		if (ioctl(c->fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno != ENOENT)
			c->err = errno;
	}
	return NULL;
}

static struct runv_catch *runv_catch_start(int fd)
{
	struct runv_catch *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->fd = fd;
	if (pthread_create(&c->thread, NULL, runv_catch_loop, c) != 0) {
		free(c);
		return NULL;
	}
	return c;
}

static void runv_catch_stop(struct runv_catch *c)
{
	__atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
	pthread_join(c->thread, NULL);
}

static void runv_catch_free(struct runv_catch *c)
{
	free(c->prog);
	free(c);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"golang.org/x/sys/unix"
)

// compileSeccomp returns the BPF program that libcontainer loads for a seccomp profile —
// libseccomp's filter with libcontainer's -ENOSYS stub in front (patchbpf) — and the
// seccomp(2) flags it loads it with, without loading it into the agent. libcontainer only
// exports "build and load" (seccomp.InitSeccomp), so it runs on a thread of its own that
// first installs a catcher filter: the final load (prctl(PR_SET_SECCOMP) or
// seccomp(SECCOMP_SET_MODE_FILTER) with a program) becomes a user notification, which a C
// thread answers with ECANCELED after copying the program, so that nothing is loaded.
// libseccomp's own probes (a NULL program) run as they would. The thread is never
// unlocked: it carries the catcher, and Go ends it with its goroutine (never the main
// thread: onThreadOfItsOwn). Byte for byte the program libcontainer's `runc init` would load, for
// the exec helper (cmd/runv-exec).
func compileSeccomp(cfg *configs.Seccomp) (prog []byte, flags uint32, err error) {
	if runtime.GOARCH != "amd64" {
		return nil, 0, fmt.Errorf("seccomp capture: not implemented on %s", runtime.GOARCH)
	}
	compileMu.Lock()
	defer compileMu.Unlock()
	listeners := make(chan int, 1)
	answering := make(chan bool, 1)
	loaded := make(chan error, 1)
	go onThreadOfItsOwn(func() {
		fd, err := installLoadCatcher()
		if err != nil {
			loaded <- fmt.Errorf("seccomp capture: install the catcher: %w", err)
			listeners <- -1
			return
		}
		listeners <- fd
		if !<-answering {
			loaded <- nil
			return
		}
		_, err = seccomp.InitSeccomp(cfg)
		loaded <- err
	})
	fd := <-listeners
	if fd < 0 {
		return nil, 0, <-loaded
	}
	c := C.runv_catch_start(C.int(fd))
	if c == nil {
		answering <- false
		unix.Close(fd)
		<-loaded
		return nil, 0, errors.New("seccomp capture: cannot start the answering thread")
	}
	answering <- true
	var lerr error
	select {
	case lerr = <-loaded:
	case <-time.After(10 * time.Second):
	}
	C.runv_catch_stop(c)
	// Closing the listener releases a call still waiting (it fails with ENOSYS).
	unix.Close(fd)
	if lerr == nil {
		select {
		case lerr = <-loaded:
		case <-time.After(10 * time.Second):
			lerr = errors.New("timed out")
		}
	}
	defer C.runv_catch_free(c)
	switch {
	case c.prog != nil:
		return C.GoBytes(unsafe.Pointer(c.prog), c.prog_len), uint32(c.flags), nil
	case c.err != 0:
		return nil, 0, fmt.Errorf("seccomp capture: %w", syscall.Errno(c.err))
	case lerr != nil:
		return nil, 0, fmt.Errorf("seccomp: %w", lerr)
	}
	return nil, 0, errors.New("seccomp capture: libcontainer loaded no filter")
}

// onThreadOfItsOwn runs f locked to an OS thread that is not the main thread, and that
// thread ends with f: Go terminates a thread whose locked goroutine exits, except the main
// thread, which it parks for good instead — with the catcher on it (the agent, PID 1, would
// show a seccomp filter for the rest of the VM's life). If the calling goroutine landed on
// the main thread, it keeps that thread while f runs in a new goroutine, which therefore
// gets another one.
func onThreadOfItsOwn(f func()) {
	runtime.LockOSThread()
	if unix.Gettid() != unix.Getpid() {
		f() // never unlocked: the thread ends with this goroutine
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked, as above; not the main thread, which we hold
		f()
	}()
	<-done
	runtime.UnlockOSThread()
}

// compileMu makes compiles take turns.
var compileMu sync.Mutex

// installLoadCatcher puts a filter on the calling thread that turns the two ways of loading
// a seccomp filter into user notifications, and returns the listener.
func installLoadCatcher() (int, error) {
	const (
		ld    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		arch  = 4  // offsetof(struct seccomp_data, arch)
		nr    = 0  // offsetof(struct seccomp_data, nr)
		arg0  = 16 // low half of args[0] (little endian)
		arg1  = 24 // low half of args[1]
		allow = unix.SECCOMP_RET_ALLOW
		catch = unix.SECCOMP_RET_USER_NOTIF
	)
	filter := []unix.SockFilter{
		{Code: ld, K: arch},
		{Code: jeq, K: unix.AUDIT_ARCH_X86_64, Jf: 9}, // other arch: allow
		{Code: ld, K: nr},
		{Code: jeq, K: unix.SYS_SECCOMP, Jf: 2}, // not seccomp: try prctl
		{Code: ld, K: arg0},
		{Code: jeq, K: unix.SECCOMP_SET_MODE_FILTER, Jt: 6, Jf: 5},
		{Code: jeq, K: unix.SYS_PRCTL, Jf: 4},
		{Code: ld, K: arg0},
		{Code: jeq, K: unix.PR_SET_SECCOMP, Jf: 2},
		{Code: ld, K: arg1},
		{Code: jeq, K: unix.SECCOMP_MODE_FILTER, Jt: 1},
		{Code: ret, K: allow},
		{Code: ret, K: catch},
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	fd, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(filter)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}
