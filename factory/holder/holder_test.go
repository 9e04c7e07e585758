package holder

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/internal/wire"
	"github.com/runv-project/runv/hypervisor"
)

// fakeVM is a VM without QEMU.
type fakeVM struct {
	id   string
	done chan struct{}
	once sync.Once
}

func (v *fakeVM) ID() string { return v.id }
func (v *fakeVM) Pid() int   { return 4242 }
func (v *fakeVM) Channels(context.Context) (*hypervisor.Channels, error) {
	return nil, errors.New("fake")
}
func (v *fakeVM) Done() <-chan struct{}          { return v.done }
func (v *fakeVM) Shutdown(context.Context) error { return v.Kill() }
func (v *fakeVM) Kill() error                    { v.once.Do(func() { close(v.done) }); return nil }
func (v *fakeVM) ConsoleLog() string             { return "" }
func (v *fakeVM) Accel() string                  { return hypervisor.AccelTCG }
func (v *fakeVM) Restored() bool                 { return false }
func (v *fakeVM) Grown() bool                    { return false }

type fakeFactory struct{ vm *fakeVM }

func (f *fakeFactory) GetVM(_ context.Context, req factory.Request) (hypervisor.VM, error) {
	f.vm = &fakeVM{id: req.ID, done: make(chan struct{})}
	return f.vm, nil
}
func (f *fakeFactory) Name() string { return "fake" }
func (f *fakeFactory) Close() error { return nil }

func init() {
	parkVM = func(context.Context, hypervisor.VM) (*parkedAgent, error) { return nil, nil }
}

// socketPair is a connected pair of unix stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// The agent's connection, parked by the holder, goes to the VM's owner open: what the owner
// writes on it reaches the agent's end, which never saw the holder's side close. Before the
// hand-out nobody gets it, and the owner gets it once.
func TestHolderHandsTheAgentConnectionToItsOwner(t *testing.T) {
	hostCtl, agentCtl := socketPair(t)
	hostStream, agentStream := socketPair(t)
	defer agentCtl.Close()
	defer agentStream.Close()
	parkVM = func(context.Context, hypervisor.VM) (*parkedAgent, error) {
		ch := &hypervisor.Channels{Control: hostCtl, Stream: hostStream}
		return &parkedAgent{client: agentclient.New(ch, agentclient.Options{PodID: "vm1"}), ch: ch}, nil
	}
	defer func() { parkVM = func(context.Context, hypervisor.VM) (*parkedAgent, error) { return nil, nil } }()

	base := t.TempDir()
	dir := filepath.Join(base, "vm1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() {
		ran <- Run(ctx, Config{ID: "vm1", Dir: dir, Factory: &fakeFactory{}, Parent: os.Getppid()}, w)
	}()
	defer func() { cancel(); <-ran }()
	if line, _ := bufio.NewReader(r).ReadString('\n'); !strings.HasPrefix(line, "ok ") {
		t.Fatalf("holder reported %q", line)
	}
	if resp, err := wire.CallFiles(ctx, filepath.Join(dir, Socket), wire.Request{Op: wire.OpAgent}); !errors.Is(err, errdefs.ErrFailedPrecondition) || len(resp.Files) != 0 {
		t.Fatalf("op agent of a pooled VM: %d files, %v", len(resp.Files), err)
	}
	podVM := filepath.Join(base, "pod-vm")
	if err := os.Mkdir(podVM, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Call(ctx, filepath.Join(dir, Socket), wire.Request{Op: wire.OpAdopt, Pid: os.Getpid(), Dir: podVM}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(podVM, Socket)
	resp, err := wire.CallFiles(ctx, sock, wire.Request{Op: wire.OpAgent})
	if err != nil || resp.VM == nil || resp.VM.Owner != os.Getpid() {
		t.Fatalf("op agent of the owner: %+v, %v", resp.VM, err)
	}
	ch := channelsOf(resp.Files)
	if ch == nil {
		t.Fatalf("op agent passed %d descriptors, want the control and stream channels", len(resp.Files))
	}
	defer ch.Close()
	for _, c := range []struct {
		name        string
		host, agent net.Conn
	}{{"control", ch.Control, agentCtl}, {"stream", ch.Stream, agentStream}} {
		if _, err := c.host.Write([]byte("x")); err != nil {
			t.Fatalf("%s: write on the passed channel: %v", c.name, err)
		}
		c.agent.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 8)
		n, err := c.agent.Read(b)
		if err != nil || string(b[:n]) != "x" {
			t.Errorf("%s: the agent's end read %q, %v; want what the owner wrote, on a connection never closed", c.name, b[:n], err)
		}
	}
	if again, err := wire.CallFiles(ctx, sock, wire.Request{Op: wire.OpAgent}); err != nil || len(again.Files) != 0 {
		t.Errorf("second op agent: %d files, %v; want none, the connection was taken", len(again.Files), err)
	}
}

// A holder boots its VM, reports, answers info, moves the VM's directory on adopt, and
// kills the VM when its new owner exits; the directory stays (it is the pod's now).
func TestHolderAdoptAndOwnerExit(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "vm1")
	if err := os.MkdirAll(filepath.Join(dir, "share"), 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeFactory{}
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- Run(ctx, Config{ID: "vm1", Dir: dir, ShareDir: filepath.Join(dir, "share"), CPUs: 1, MemoryMiB: 128,
			Factory: f, Parent: os.Getppid()}, w)
	}()
	line, _ := bufio.NewReader(r).ReadString('\n')
	if !strings.HasPrefix(line, "ok ") {
		t.Fatalf("holder reported %q", line)
	}
	sock := filepath.Join(dir, Socket)
	resp, err := wire.Call(ctx, sock, wire.Request{Op: wire.OpInfo})
	if err != nil || resp.VM.Accel != hypervisor.AccelTCG || resp.VM.HolderPid != os.Getpid() || resp.VM.Owner != 0 {
		t.Fatalf("info: %+v, %v", resp.VM, err)
	}
	if _, err := wire.Call(ctx, sock, wire.Request{Op: wire.OpGrow, CPUs: 2}); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("grow of a VM without hot-plug: %v", err)
	}

	owner := exec.Command("sleep", "60")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer owner.Process.Kill()
	podVM := filepath.Join(base, "pod-vm")
	if err := os.Mkdir(podVM, 0o700); err != nil { // as the supervisor makes it: empty
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "share")) // the pool moved it to the pod's share already
	resp, err = wire.Call(ctx, sock, wire.Request{Op: wire.OpAdopt, Pid: owner.Process.Pid, Dir: podVM})
	if err != nil {
		t.Fatal(err)
	}
	if resp.VM.Owner != owner.Process.Pid || resp.VM.Dir != podVM {
		t.Errorf("adopted: %+v", resp.VM)
	}
	if _, err := os.Stat(filepath.Join(podVM, Socket)); err != nil {
		t.Errorf("VM directory not moved: %v", err)
	}
	if _, err := wire.Call(ctx, filepath.Join(podVM, Socket), wire.Request{Op: wire.OpAdopt, Pid: os.Getpid(), Dir: dir}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second adopt: %v", err)
	}

	// The owner goes: the VM goes, and the holder ends, leaving the pod's directory.
	owner.Process.Kill()
	owner.Wait()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("holder did not end after its owner exited")
	}
	select {
	case <-f.vm.Done():
	default:
		t.Error("VM not killed")
	}
	if _, err := os.Stat(podVM); err != nil {
		t.Errorf("the pod's VM directory went: %v", err)
	}
	if _, err := os.Stat(filepath.Join(podVM, Socket)); !os.IsNotExist(err) {
		t.Errorf("holder socket left: %v", err)
	}
}

// A holder whose VM was never handed out takes its directory with it.
func TestHolderStopRemovesPooledDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm1")
	if err := os.MkdirAll(filepath.Join(dir, "share"), 0o700); err != nil {
		t.Fatal(err)
	}
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- Run(ctx, Config{ID: "vm1", Dir: dir, ShareDir: filepath.Join(dir, "share"), Factory: &fakeFactory{}, Parent: os.Getppid()}, w)
	}()
	if line, _ := bufio.NewReader(r).ReadString('\n'); !strings.HasPrefix(line, "ok ") {
		t.Fatalf("holder reported %q", line)
	}
	if _, err := wire.Call(ctx, filepath.Join(dir, Socket), wire.Request{Op: wire.OpKill}); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pooled VM directory left: %v", err)
	}
}

// A holder refuses to run for a parent that is not its parent (it could not watch it).
func TestHolderChecksParent(t *testing.T) {
	dir := t.TempDir()
	r, w := io.Pipe()
	reported := make(chan string, 1)
	go func() {
		b, _ := bufio.NewReader(r).ReadString('\n')
		reported <- b
	}()
	err := Run(context.Background(), Config{ID: "x", Dir: dir, Factory: &fakeFactory{}, Parent: os.Getpid()}, w)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Run with a wrong parent: %v", err)
	}
	if b := <-reported; !strings.HasPrefix(b, "error: ") {
		t.Errorf("reported %q", b)
	}
}
