package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
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
// seccomp(SECCOMP_SET_MODE_FILTER) with a program) becomes a user notification, whose
// arguments the agent reads, and which it answers with ECANCELED so that nothing is
// loaded. libseccomp's own probes (a NULL program) run as they would. The thread is never
// unlocked: it carries the catcher and ends with its goroutine. Byte for byte the program
// libcontainer's `runc init` would load, for the exec helper (cmd/runv-exec).
func compileSeccomp(cfg *configs.Seccomp) (prog []byte, flags uint32, err error) {
	if runtime.GOARCH != "amd64" {
		return nil, 0, fmt.Errorf("seccomp capture: not implemented on %s", runtime.GOARCH)
	}
	listeners := make(chan int, 1)
	loaded := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := installLoadCatcher()
		if err != nil {
			loaded <- fmt.Errorf("seccomp capture: install the catcher: %w", err)
			listeners <- -1
			return
		}
		listeners <- fd
		_, err = seccomp.InitSeccomp(cfg)
		loaded <- err
	}()
	fd := <-listeners
	if fd < 0 {
		return nil, 0, <-loaded
	}
	defer unix.Close(fd)
	prog, flags, cerr := catchLoad(fd, 10*time.Second)
	lerr := <-loaded
	switch {
	case cerr != nil:
		return nil, 0, cerr
	case prog == nil && lerr != nil:
		return nil, 0, fmt.Errorf("seccomp: %w", lerr)
	case prog == nil:
		return nil, 0, errors.New("seccomp capture: libcontainer loaded no filter")
	}
	return prog, flags, nil
}

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

// Layouts of struct seccomp_notif (80 bytes) and struct seccomp_notif_resp (24 bytes).
const (
	notifSize     = 80
	notifRespSize = 24
	notifArgs     = 32 // offsetof(struct seccomp_notif, data.args)
)

// catchLoad answers the catcher's notifications until the load is caught or the thread
// is gone (POLLHUP: the filter has no task left). It returns the program and the flags.
func catchLoad(fd int, limit time.Duration) (prog []byte, flags uint32, err error) {
	deadline := time.Now().Add(limit)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, 0, errors.New("seccomp capture: timed out")
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(wait.Milliseconds())+1)
		if err == unix.EINTR || n == 0 {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("seccomp capture: poll: %w", err)
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			return prog, flags, nil // POLLHUP: the thread finished
		}
		var notif [notifSize]byte
		if err := ioctlPtr(fd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&notif[0])); err != nil {
			if err == unix.ENOENT || err == unix.EINTR {
				continue // the call went away meanwhile
			}
			return nil, 0, fmt.Errorf("seccomp capture: receive: %w", err)
		}
		id := binary.LittleEndian.Uint64(notif[0:])
		callNr := int32(binary.LittleEndian.Uint32(notif[16:]))
		arg := func(i int) uint64 { return binary.LittleEndian.Uint64(notif[notifArgs+8*i:]) }
		var resp [notifRespSize]byte
		binary.LittleEndian.PutUint64(resp[0:], id)
		if ptr := arg(2); ptr == 0 || prog != nil {
			// libseccomp probing the kernel (a NULL program): let the kernel answer.
			binary.LittleEndian.PutUint32(resp[20:], unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE)
		} else {
			p, rerr := readFprog(ptr)
			if rerr != nil {
				return nil, 0, rerr
			}
			prog = p
			if callNr == unix.SYS_SECCOMP {
				flags = uint32(arg(1))
			}
			cancel := -int32(unix.ECANCELED)
			binary.LittleEndian.PutUint32(resp[16:], uint32(cancel))
		}
		if err := ioctlPtr(fd, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp[0])); err != nil && err != unix.ENOENT {
			return nil, 0, fmt.Errorf("seccomp capture: answer: %w", err)
		}
	}
}

// readFprog copies a struct sock_fprog and its program out of this process's memory, at
// an address another thread passed to the kernel (it waits in that call meanwhile).
func readFprog(addr uint64) ([]byte, error) {
	var hdr [16]byte // struct sock_fprog: u16 len, padding, pointer
	if err := readSelf(addr, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.LittleEndian.Uint16(hdr[0:]))
	if n == 0 || n > 4096 {
		return nil, fmt.Errorf("seccomp capture: a program of %d instructions", n)
	}
	prog := make([]byte, n*8)
	if err := readSelf(binary.LittleEndian.Uint64(hdr[8:]), prog); err != nil {
		return nil, err
	}
	return prog, nil
}

func readSelf(addr uint64, buf []byte) error {
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(unix.Getpid(), local, remote, 0)
	if err != nil {
		return fmt.Errorf("seccomp capture: read the program: %w", err)
	}
	if n != len(buf) {
		return fmt.Errorf("seccomp capture: read %d of %d bytes of the program", n, len(buf))
	}
	return nil
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}
