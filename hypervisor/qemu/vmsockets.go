package qemu

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/sockets"
)

// Descriptors under which QEMU inherits the listening sockets runv made for it (after the
// console pipe, consoleFD), then a launch's extraFiles: a clone's device state and
// translations, or another VM's translations (translations.go).
const (
	qmpFD = consoleFD + 1 + iota
	controlFD
	streamFD
	stateFD
	cloneTranslationsFD
)

// translationsFD is the translations file of a VM that inherits no device state.
const translationsFD = stateFD

// vmListeners are a VM's QMP and channel sockets, made by runv and inherited by QEMU
// (-chardev socket,fd=N,server=on) rather than made by QEMU at its paths. They listen
// from before QEMU runs, and connections wait in their queues until QEMU accepts them:
// runv connects right after the fork instead of polling for the sockets to appear (QEMU
// made them 20-30 ms after it started), a clone connects its channels and writes its QMP
// commands together with the handshake before QEMU is up, and the sockets are owner-only
// from their bind on (no chmod after QEMU made them). Everything that dials them later
// finds them at the same paths.
type vmListeners struct {
	files []*os.File // QMP, control, stream: in the order of their descriptors
}

// listenVM makes p's three sockets. On failure nothing is left.
func listenVM(p paths) (*vmListeners, error) {
	ls := &vmListeners{}
	for _, path := range []string{p.QMP, p.Control, p.Stream} {
		f, err := listenFile(path)
		if err != nil {
			ls.close()
			p.removeTransient()
			return nil, err
		}
		ls.files = append(ls.files, f)
	}
	return ls, nil
}

// listenFile listens at path, owner-only (sockets.Mode), and returns the socket for QEMU to
// inherit. The mode is the socket's before bind(2), which Linux gives the file it creates
// (less the umask): no chmod(2) after it, a metadata write less on the launch's path. runv
// never accepts on the socket itself, so it needs neither Go's poller nor a duplicate of the
// descriptor.
func listenFile(path string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket for %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	if err := unix.Fchmod(fd, uint32(sockets.Mode)); err != nil {
		f.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		f.Close()
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return f, nil
}

// close drops runv's descriptors of the sockets (QEMU holds its own once started).
// Closing twice is harmless.
func (ls *vmListeners) close() {
	for _, f := range ls.files {
		f.Close()
	}
}

// pendingListeners are a VM's sockets being made in the background (listenVMAsync).
type pendingListeners struct {
	done chan struct{}
	ls   *vmListeners
	err  error
}

// listenVMAsync makes p's sockets in a goroutine of their own.
func listenVMAsync(p paths) *pendingListeners {
	pl := &pendingListeners{done: make(chan struct{})}
	go func() {
		defer close(pl.done)
		pl.ls, pl.err = listenVM(p)
	}()
	return pl
}

// wait returns the sockets once made.
func (pl *pendingListeners) wait() (*vmListeners, error) {
	<-pl.done
	return pl.ls, pl.err
}

// close waits for the sockets and drops runv's descriptors of them; the files stay.
func (pl *pendingListeners) close() {
	if ls, err := pl.wait(); err == nil {
		ls.close()
	}
}

// dialQueued connects to a VM's socket, which is listening (vmListeners) whether or not
// QEMU accepts yet: the connection waits in the socket's queue until QEMU does.
func dialQueued(path string) (net.Conn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", path, err)
	}
	return c, nil
}
