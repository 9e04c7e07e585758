package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// errHostDisconnected is returned by a control port's Read when the host side of the
// virtio-serial port is not connected (read(2) returns 0 then, it does not block).
var errHostDisconnected = errors.New("host side of the port is not connected")

// reconnectFallback bounds the wait for a host reconnect when no SIGIO arrives. The
// virtio-serial driver signals SIGIO on every host connect, so this is only a safety net
// (poll(2) cannot be used to wait: it reports POLLHUP at once while the host is away).
const reconnectFallback = 50 * time.Millisecond

// openAgentPorts opens the control and stream ports: at the nodes the kernel command line
// names (runv.ports, which runv passes), else at those findPorts finds by their names. The
// named nodes spare a cold guest's boot the sysfs lookups of the names (~150 translated
// blocks, ~1 ms under TCG); a named node that is not there (yet: the driver adds ports from
// a workqueue) falls back to the lookup, which also waits for them.
// named reports whether the nodes were the command line's.
func openAgentPorts(f bootFlags, hub *sigioHub) (ctl, stream *vport, named bool, err error) {
	if f.ControlPort != "" {
		if ctl, stream, err = openPortPair("/dev/"+f.ControlPort, "/dev/"+f.StreamPort, hub); err == nil {
			return ctl, stream, true, nil
		}
	}
	paths, err := findPorts(portWait, agentproto.ControlPortName, agentproto.StreamPortName)
	if err != nil {
		return nil, nil, false, err
	}
	ctl, stream, err = openPortPair(paths[0], paths[1], hub)
	return ctl, stream, false, err
}

// openPortPair opens the control and stream ports at these nodes: both, or neither.
func openPortPair(ctlPath, streamPath string, hub *sigioHub) (ctl, stream *vport, err error) {
	if ctl, err = openPort(agentproto.ControlPortName, ctlPath, hub, false); err != nil {
		return nil, nil, err
	}
	if stream, err = openPort(agentproto.StreamPortName, streamPath, hub, true); err != nil {
		ctl.Close()
		return nil, nil, err
	}
	return ctl, stream, nil
}

// findPorts waits until the virtio-serial ports with the given names exist and returns
// their device paths, in order. The driver adds ports from a workqueue after the host
// announced them, and names them later still, so they may appear after init started: the
// wait follows kernel uevents (port add, then a change event when the name is set) rather
// than polling sysfs.
func findPorts(timeout time.Duration, names ...string) ([]string, error) {
	if paths, ok := portsInOrder("/sys/class/virtio-ports", "/dev", names); ok {
		return paths, nil
	}
	// The driver has usually named them by the time init runs: then one scan is all, and the
	// uevent socket (a first-time kernel path under TCG) is not made at all.
	if paths, missing := scanPorts(names); len(missing) == 0 {
		return paths, nil
	}
	sock, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err == nil {
		defer unix.Close(sock)
		if err := unix.Bind(sock, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
			unix.Close(sock)
			sock = -1
		}
	} else {
		sock = -1
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 8192)
	for {
		// Scan after subscribing, so that no event between scan and wait is missed.
		paths, missing := scanPorts(names)
		if len(missing) == 0 {
			return paths, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("virtio-serial port(s) %s not found under /sys/class/virtio-ports within %s", strings.Join(missing, ", "), timeout)
		}
		if sock < 0 {
			// No uevent socket (cannot happen with CONFIG_NET): fall back to a short poll.
			time.Sleep(min(left, 10*time.Millisecond))
			continue
		}
		fds := []unix.PollFd{{Fd: int32(sock), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(min(left, 100*time.Millisecond)/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return nil, fmt.Errorf("wait for virtio-serial ports: %w", err)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			_, _, _ = unix.Recvfrom(sock, buf, unix.MSG_DONTWAIT)
		}
	}
}

// portsInOrder checks the ports where runv's QEMU command line puts them: names[i] is port
// i+1 of the first virtio-serial device (port 0 is reserved for a console), vport0p<i+1>.
// Two name files read where a scan lists the class directory and globs it: under TCG the
// scan's readdir and pattern matching are code a cold guest runs for nothing but this
// (~500 translated blocks, ~4 ms of a direct boot). Any other layout (another VMM, a test
// harness) finds its ports by the scan.
func portsInOrder(classDir, devDir string, names []string) ([]string, bool) {
	paths := make([]string, len(names))
	for i, n := range names {
		port := "vport0p" + strconv.Itoa(i+1)
		b, err := os.ReadFile(classDir + "/" + port + "/name")
		if err != nil || strings.TrimSpace(string(b)) != n {
			return nil, false
		}
		paths[i] = devDir + "/" + port
		if _, err := os.Stat(paths[i]); err != nil {
			return nil, false
		}
	}
	return paths, true
}

// scanPorts maps port names to /dev/vportNpM paths.
func scanPorts(names []string) (paths, missing []string) {
	found := make(map[string]string)
	dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err != nil {
			continue
		}
		found[strings.TrimSpace(string(b))] = "/dev/" + filepath.Base(d)
	}
	for _, n := range names {
		p, ok := found[n]
		if !ok {
			missing = append(missing, n)
			continue
		}
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, n+" ("+p+" has no device node yet)")
			continue
		}
		paths = append(paths, p)
	}
	return paths, missing
}

// sigioHub turns SIGIO into a broadcast: waiters take the current channel, which is closed
// (and replaced) on the next SIGIO.
type sigioHub struct {
	mu sync.Mutex
	ch chan struct{}
}

func newSigioHub() *sigioHub {
	h := &sigioHub{ch: make(chan struct{})}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGIO)
	go func() {
		for range sigs {
			h.mu.Lock()
			close(h.ch)
			h.ch = make(chan struct{})
			h.mu.Unlock()
		}
	}()
	return h
}

func (h *sigioHub) next() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ch
}

// vport is one virtio-serial port, survivng host disconnects: the host side goes away
// when the runtime that owns the VM closes its socket (a VM template being snapshotted and
// later cloned, a restarted pod daemon), and the guest must then wait for it to come back
// with its state intact.
//
// Writes need no help: the driver blocks them while the host is away. Reads return 0 then;
// a port with waitOnRead set (the stream port, read by the mux, which must not see EOF)
// waits for the host and reads on, one without it (the control port) returns
// errHostDisconnected so that the control loop can announce itself again with READY.
type vport struct {
	name, path string
	f          *os.File
	hub        *sigioHub
	waitOnRead bool

	disconnected atomic.Bool
	closed       chan struct{}
	closeOnce    sync.Once
}

func openPort(name, path string, hub *sigioHub, waitOnRead bool) (*vport, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open port %s (%s): %w", name, path, err)
	}
	return &vport{name: name, path: path, f: f, hub: hub, waitOnRead: waitOnRead, closed: make(chan struct{})}, nil
}

func (p *vport) Read(b []byte) (int, error) {
	for {
		n, err := p.f.Read(b)
		if n > 0 {
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, fmt.Errorf("read port %s: %w", p.name, err)
		}
		p.disconnected.Store(true)
		if !p.waitOnRead {
			return 0, errHostDisconnected
		}
		if err := p.waitConnected(); err != nil {
			return 0, err
		}
	}
}

func (p *vport) Write(b []byte) (int, error) {
	n, err := p.f.Write(b)
	if err != nil {
		return n, fmt.Errorf("write port %s: %w", p.name, err)
	}
	return n, nil
}

func (p *vport) Close() error {
	p.closeOnce.Do(func() { close(p.closed) })
	return p.f.Close()
}

// takeDisconnected reports whether a read saw the host away since the last call.
func (p *vport) takeDisconnected() bool { return p.disconnected.Swap(false) }

// connected reports whether the host side is connected: poll(2) on the port sets POLLHUP
// while it is not.
func (p *vport) connected() (bool, error) {
	var (
		revents int16
		perr    error
	)
	rc, err := p.f.SyscallConn()
	if err != nil {
		return false, err
	}
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, perr = unix.Poll(fds, 0)
			if perr != unix.EINTR {
				break
			}
		}
		revents = fds[0].Revents
	}); err != nil {
		return false, err
	}
	if perr != nil {
		return false, fmt.Errorf("poll port %s: %w", p.name, perr)
	}
	return revents&unix.POLLHUP == 0, nil
}

// setAsync turns SIGIO delivery for the port on or off. It is on only while waiting for
// the host: the driver also raises SIGIO for every incoming buffer.
func (p *vport) setAsync(on bool) error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		if _, ferr = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid()); ferr != nil {
			return
		}
		var fl int
		if fl, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0); ferr != nil {
			return
		}
		if on {
			fl |= unix.O_ASYNC
		} else {
			fl &^= unix.O_ASYNC
		}
		_, ferr = unix.FcntlInt(fd, unix.F_SETFL, fl)
	}); err != nil {
		return err
	}
	return ferr
}

// waitConnected returns once the host side is connected.
func (p *vport) waitConnected() error {
	// At boot the host is connected long before the agent opens the port: no SIGIO set-up
	// (three fcntl calls each way) is needed then.
	if ok, err := p.connected(); err != nil || ok {
		return err
	}
	if err := p.setAsync(true); err != nil {
		return fmt.Errorf("port %s: enable SIGIO: %w", p.name, err)
	}
	defer p.setAsync(false)
	timer := time.NewTimer(reconnectFallback)
	defer timer.Stop()
	for {
		// Take the broadcast channel before checking, so a connect right after the check
		// still wakes us.
		wake := p.hub.next()
		ok, err := p.connected()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-wake:
		case <-timer.C:
			timer.Reset(reconnectFallback)
		case <-p.closed:
			return fmt.Errorf("port %s: closed", p.name)
		}
	}
}
