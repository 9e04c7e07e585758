//go:build integration

// The integration tests boot the agent in a real VM (QEMU, TCG unless RUNV_ACCEL says
// otherwise) and speak the protocol to it as the host does:
//
//	go test -tags integration -run VM -v ./agent/
//
// Inputs (all optional):
//
//	RUNV_KERNEL  guest vmlinux (default: kernel-config/build.sh, which returns the cached one)
//	RUNV_INITRD  initramfs (default: the agent is built static and packed into a temp dir)
//	RUNV_AGENT   the agent binary packed in RUNV_INITRD (TestVMContainerSteps times its start)
//	RUNV_QEMU    emulator (default qemu-system-x86_64)
//	RUNV_ACCEL   tcg (default) or kvm
//	RUNV_AGENT_DEBUG=1  boots with runv.debug=1 (every frame and libcontainer's debug log on
//	             the console, printed with -v or on failure; slower under TCG)
//	RUNV_QEMU_ARGS  more QEMU arguments, space-separated: "-d in_asm -D FILE" logs every
//	             block QEMU translates (TestVMContainerSteps counts them per phase),
//	             "-icount shift=0" makes guest time count executed instructions
package agent

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	qemuhv "github.com/runv-project/runv/hypervisor/qemu"
)

var (
	artifactsOnce sync.Once
	kernelPath    string
	initrdPath    string
	agentPath     string // the agent binary in initrdPath, when known (RUNV_AGENT or built here)
	artifactsErr  error
)

// artifacts returns the kernel and initrd, building the initrd once per test binary.
func artifacts(t *testing.T) (kernel, initrd string) {
	t.Helper()
	artifactsOnce.Do(func() {
		kernelPath = os.Getenv("RUNV_KERNEL")
		if kernelPath == "" {
			out, err := exec.Command("../kernel-config/build.sh").Output()
			if err != nil {
				artifactsErr = fmt.Errorf("kernel-config/build.sh: %w", err)
				return
			}
			kernelPath = strings.TrimSpace(string(out))
		}
		initrdPath = os.Getenv("RUNV_INITRD")
		if initrdPath != "" {
			agentPath = os.Getenv("RUNV_AGENT")
			return
		}
		dir, err := os.MkdirTemp("", "runv-agent-it-")
		if err != nil {
			artifactsErr = err
			return
		}
		bin := filepath.Join(dir, "runv-agent")
		build := exec.Command("go", "build", "-trimpath", "-tags", "seccomp netgo osusergo",
			"-ldflags", "-s -w -linkmode external -extldflags -static", "-o", bin, "../cmd/runv-agent")
		build.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := build.CombinedOutput(); err != nil {
			artifactsErr = fmt.Errorf("build agent: %w\n%s", err, out)
			return
		}
		agentPath = bin
		helper := filepath.Join(dir, "runv-exec")
		if out, err := exec.Command("../cmd/runv-exec/build.sh", helper, "-s").CombinedOutput(); err != nil {
			artifactsErr = fmt.Errorf("build the exec helper: %w\n%s", err, out)
			return
		}
		initrdPath = filepath.Join(dir, "initrd.cpio")
		if out, err := exec.Command("go", "run", "../initrd", "-agent", bin, "-exec", helper, "-o", initrdPath).CombinedOutput(); err != nil {
			artifactsErr = fmt.Errorf("pack initrd: %w\n%s", err, out)
		}
	})
	if artifactsErr != nil {
		t.Fatal(artifactsErr)
	}
	return kernelPath, initrdPath
}

// tscKHz is the host TSC frequency for tsc_early_khz (mandatory under TCG on microvm,
// see docs: with pit=off the guest cannot calibrate its TSC and hangs).
func tscKHz(t *testing.T) int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	t.Fatal("no cpu MHz in /proc/cpuinfo")
	return 0
}

// makeRootfs builds a busybox rootfs in the share, as /work/shared/tools/mk-busybox-rootfs.sh
// does (static busybox, one symlink per applet).
func makeRootfs(t *testing.T, dir string) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox (apt-get install busybox-static)")
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys", "dev", "run", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(list)) {
		if p == "bin/busybox" {
			continue
		}
		_ = os.Symlink("/bin/busybox", filepath.Join(dir, p))
	}
	os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\n"), 0o644)
}

// consoleLine is one line of the guest's serial console with its host arrival time.
type consoleLine struct {
	at   time.Duration // since qemu start
	text string
}

// testVM is a booted guest and the host end of its protocol.
type testVM struct {
	t *testing.T
	// execHint is the program hint (ExecProcess.ProgramHint) exec sends.
	execHint string
	cmd      *exec.Cmd
	start    time.Time
	share    string
	ctlPath  string

	ctlMu sync.Mutex
	ctl   net.Conn
	mux   *agentproto.Mux

	mu      sync.Mutex
	nextID  uint64
	nextSeq uint64
	waiting map[uint64]chan agentproto.ControlFrame
	events  chan timedFrame
	console []consoleLine
	lines   chan struct{} // closed and replaced on every console line
	exited  chan struct{}
}

type timedFrame struct {
	at time.Duration
	f  agentproto.ControlFrame
}

type vmOptions struct {
	cmdline string // extra kernel parameters
}

// bootVM starts QEMU with the recommended microvm configuration (docs: guest-boot.md). The
// chardev sockets are listening sockets created here and handed to QEMU (fd=N), so the
// test connects without waiting for QEMU to create them.
func bootVM(t *testing.T, opt vmOptions) *testVM {
	t.Helper()
	kernel, initrd := artifacts(t)
	dir := t.TempDir()
	v := &testVM{
		t: t, share: filepath.Join(dir, "share"), ctlPath: filepath.Join(dir, "ctl.sock"),
		waiting: make(map[uint64]chan agentproto.ControlFrame), events: make(chan timedFrame, 64),
		exited: make(chan struct{}), nextSeq: 1, lines: make(chan struct{}),
	}
	if err := os.MkdirAll(v.share, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := func(path string) *os.File {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		ul := l.(*net.UnixListener)
		ul.SetUnlinkOnClose(false)
		f, err := ul.File()
		if err != nil {
			t.Fatal(err)
		}
		l.Close() // f keeps the socket; QEMU accepts on it
		return f
	}
	streamPath := filepath.Join(dir, "stream.sock")
	ctlL, streamL := listen(v.ctlPath), listen(streamPath)
	defer ctlL.Close()
	defer streamL.Close()

	qemu := os.Getenv("RUNV_QEMU")
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	accel := os.Getenv("RUNV_ACCEL")
	if accel == "" {
		accel = "tcg"
	}
	appendLine := fmt.Sprintf("console=ttyS0 quiet panic=-1 tsc_early_khz=%d tsc=reliable %s", tscKHz(t), opt.cmdline)
	if os.Getenv("RUNV_AGENT_DEBUG") == "1" {
		appendLine += " runv.debug=1"
	}
	// ExtraFiles start at fd 3.
	v.cmd = exec.Command(qemu,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,accel="+accel,
		"-m", "256M",
		"-kernel", kernel, "-initrd", initrd, "-append", appendLine,
		"-serial", "stdio",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=ch0,fd=3,server=on,wait=off",
		"-device", "virtserialport,chardev=ch0,name="+agentproto.ControlPortName,
		"-chardev", "socket,id=ch1,fd=4,server=on,wait=off",
		"-device", "virtserialport,chardev=ch1,name="+agentproto.StreamPortName,
		"-fsdev", "local,id=fs0,path="+v.share+",security_model=none",
		"-device", "virtio-9p-device,fsdev=fs0,mount_tag="+agentproto.ShareTag,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng0",
	)
	v.cmd.Args = append(v.cmd.Args, strings.Fields(os.Getenv("RUNV_QEMU_ARGS"))...)
	v.cmd.ExtraFiles = []*os.File{ctlL, streamL}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	v.cmd.Stderr = v.cmd.Stdout
	// QEMU runs without transparent huge pages, as runv starts it: with THP "always" on the
	// host, a 2 MiB fault of TCG's code buffer stalls the guest 30-40 ms at random steps
	// (MEASURED-1205e), which the steps test would report as the step's time.
	if err := qemuhv.DisableHugePages(); err != nil {
		t.Logf("transparent huge pages stay on for QEMU: %v", err)
	}
	v.start = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(v.kill)
	consoleDone := make(chan struct{})
	go func() {
		v.readConsole(out)
		close(consoleDone)
	}()
	go func() {
		// Wait closes the pipe: read the console to EOF first (QEMU's exit closes it), or
		// the last lines — a probe's marker, the power-off — may be lost.
		<-consoleDone
		v.cmd.Wait()
		close(v.exited)
	}()

	v.connectControl()
	stream, err := net.Dial("unix", streamPath)
	if err != nil {
		t.Fatal(err)
	}
	v.mux = agentproto.NewMux(stream, t.Logf)
	return v
}

func (v *testVM) since() time.Duration { return time.Since(v.start) }

func (v *testVM) readConsole(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		v.mu.Lock()
		v.console = append(v.console, consoleLine{at: v.since(), text: sc.Text()})
		close(v.lines)
		v.lines = make(chan struct{})
		v.mu.Unlock()
	}
}

// dumpConsole logs the guest console with host timestamps.
func (v *testVM) dumpConsole() {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for _, l := range v.console {
		fmt.Fprintf(&b, "%8.3f %s\n", l.at.Seconds(), l.text)
	}
	v.t.Logf("guest console:\n%s", b.String())
}

// consoleHas reports when a console line containing s arrived.
func (v *testVM) consoleHas(s string) (time.Duration, bool) {
	at, n := v.consoleCount(s)
	return at, n > 0
}

// consoleCount counts console lines containing s, and when the last one arrived.
func (v *testVM) consoleCount(s string) (last time.Duration, n int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, l := range v.console {
		if strings.Contains(l.text, s) {
			last, n = l.at, n+1
		}
	}
	return last, n
}

// waitConsole waits until n console lines contain s.
func (v *testVM) waitConsole(s string, n int) time.Duration {
	v.t.Helper()
	deadline := time.After(callTimeout)
	for {
		v.mu.Lock()
		next := v.lines
		v.mu.Unlock()
		if at, got := v.consoleCount(s); got >= n {
			return at
		}
		select {
		case <-next:
		case <-v.exited:
			v.t.Fatalf("waiting for %q on the console: the VM exited", s)
		case <-deadline:
			v.t.Fatalf("no %q on the console within %s", s, callTimeout)
		}
	}
}

// use points the harness at a subtest's t (Fatal must be called on the running test) and
// returns the function restoring the parent's.
func (v *testVM) use(t *testing.T) func() {
	parent := v.t
	v.t = t
	return func() { v.t = parent }
}

func (v *testVM) kill() {
	select {
	case <-v.exited:
	default:
		v.cmd.Process.Kill()
		<-v.exited
	}
	if v.t.Failed() || testing.Verbose() {
		v.dumpConsole()
	}
}

// connectControl (re)connects to the control port and starts reading frames.
func (v *testVM) connectControl() {
	c, err := net.Dial("unix", v.ctlPath)
	if err != nil {
		v.t.Fatal(err)
	}
	v.ctlMu.Lock()
	v.ctl = c
	v.ctlMu.Unlock()
	go v.readControl(c)
}

func (v *testVM) readControl(c net.Conn) {
	for {
		f, err := agentproto.ReadControl(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				v.t.Logf("control read: %v", err)
			}
			return
		}
		at := v.since()
		if f.Type == agentproto.MsgAck || f.Type == agentproto.MsgError {
			v.mu.Lock()
			ch := v.waiting[f.ID]
			delete(v.waiting, f.ID)
			v.mu.Unlock()
			if ch == nil {
				v.t.Errorf("reply %s for unknown id %d", f.Type, f.ID)
				continue
			}
			ch <- f
			continue
		}
		v.events <- timedFrame{at: at, f: f}
	}
}

const callTimeout = 60 * time.Second

// call sends a command and waits for its reply; an ERROR comes back as *RemoteError.
func (v *testVM) call(typ agentproto.MsgType, payload, reply any) error {
	v.t.Helper()
	v.mu.Lock()
	v.nextID++
	id := v.nextID
	ch := make(chan agentproto.ControlFrame, 1)
	v.waiting[id] = ch
	v.mu.Unlock()
	f, err := agentproto.Marshal(typ, id, payload)
	if err != nil {
		v.t.Fatal(err)
	}
	v.ctlMu.Lock()
	err = agentproto.WriteControl(v.ctl, f)
	v.ctlMu.Unlock()
	if err != nil {
		v.t.Fatalf("send %s: %v", typ, err)
	}
	select {
	case r := <-ch:
		if r.Type == agentproto.MsgError {
			return r.Error
		}
		if reply != nil {
			if err := r.Unmarshal(reply); err != nil {
				v.t.Fatalf("%s reply: %v", typ, err)
			}
		}
		return nil
	case <-v.exited:
		v.t.Fatalf("%s: the VM exited", typ)
	case <-time.After(callTimeout):
		v.t.Fatalf("%s: no reply within %s", typ, callTimeout)
	}
	return nil
}

func (v *testVM) mustCall(typ agentproto.MsgType, payload, reply any) {
	v.t.Helper()
	if err := v.call(typ, payload, reply); err != nil {
		v.t.Fatalf("%s: %v", typ, err)
	}
}

// event waits for the next unsolicited frame of type typ (others are dropped, logged).
func (v *testVM) event(typ agentproto.MsgType) timedFrame {
	v.t.Helper()
	deadline := time.After(callTimeout)
	for {
		select {
		case e := <-v.events:
			if e.f.Type == typ {
				return e
			}
			v.t.Logf("skipping event %s %s", e.f.Type, e.f.Data)
		case <-v.exited:
			v.t.Fatalf("waiting for %s: the VM exited", typ)
		case <-deadline:
			v.t.Fatalf("no %s within %s", typ, callTimeout)
		}
	}
}

// exitOf waits for the PROCESSEXIT of container/process.
func (v *testVM) exitOf(ctr, proc string) agentproto.ProcessExit {
	v.t.Helper()
	for {
		e := v.event(agentproto.MsgProcessExit)
		var pe agentproto.ProcessExit
		if err := e.f.Unmarshal(&pe); err != nil {
			v.t.Fatal(err)
		}
		if pe.Container == ctr && pe.Process == proc {
			return pe
		}
		v.t.Logf("skipping exit of %s/%s", pe.Container, pe.Process)
	}
}

// hostProcess is the host end of one process's streams.
type hostProcess struct {
	io             agentproto.Stdio
	stdio, stderr  *agentproto.Stream
	firstOutput    chan time.Duration
	stdout, errout chan string // whole output, once EOF arrived
}

// reset forgets the streams of a process whose command failed, as the host client does.
func (hp *hostProcess) reset() {
	hp.stdio.Reset()
	if hp.stderr != nil {
		hp.stderr.Reset()
	}
}

// streams allocates and opens a process's streams, before the command that names them.
func (v *testVM) streams(terminal, noStdin bool) *hostProcess {
	v.mu.Lock()
	io := agentproto.Stdio{Stdio: v.nextSeq, NoStdin: noStdin}
	v.nextSeq++
	if !terminal {
		io.Stderr = v.nextSeq
		v.nextSeq++
	}
	v.mu.Unlock()
	hp := &hostProcess{io: io, firstOutput: make(chan time.Duration, 1), stdout: make(chan string, 1), errout: make(chan string, 1)}
	var err error
	if hp.stdio, err = v.mux.Open(io.Stdio); err != nil {
		v.t.Fatal(err)
	}
	go v.collect(hp.stdio, hp.stdout, hp.firstOutput)
	if io.Stderr != 0 {
		if hp.stderr, err = v.mux.Open(io.Stderr); err != nil {
			v.t.Fatal(err)
		}
		go v.collect(hp.stderr, hp.errout, nil)
	} else {
		hp.errout <- ""
	}
	return hp
}

func (v *testVM) collect(s *agentproto.Stream, out chan<- string, first chan<- time.Duration) {
	var b bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := s.Read(buf)
		if n > 0 && b.Len() == 0 && first != nil {
			first <- v.since()
		}
		b.Write(buf[:n])
		if err != nil {
			select {
			case <-v.exited:
			default:
				if !errors.Is(err, io.EOF) && !errors.Is(err, agentproto.ErrStreamClosed) {
					v.t.Errorf("stream %d: %v", s.Seq(), err)
				}
			}
			out <- b.String()
			return
		}
	}
}

func (v *testVM) output(ch <-chan string) string {
	v.t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(callTimeout):
		v.t.Fatal("no EOF on an output stream")
	}
	return ""
}

// startPod sends STARTPOD with a fresh clock and entropy.
func (v *testVM) startPod(id string) {
	v.t.Helper()
	entropy := make([]byte, 64)
	rand.Read(entropy)
	v.mustCall(agentproto.MsgStartPod, agentproto.Pod{
		ID: id, Hostname: id, DNS: []string{"192.0.2.53"}, DNSSearch: []string{"example.test"},
		TimeUnixNano: time.Now().UnixNano(), Entropy: entropy,
	}, nil)
}

// busyboxContainer makes a rootfs for id in the share and a runc default spec running args.
func (v *testVM) busyboxContainer(id string, args ...string) (rootfs string, spec *specs.Spec) {
	v.t.Helper()
	makeRootfs(v.t, filepath.Join(v.share, id, "rootfs"))
	spec = specconv.Example()
	spec.Process.Terminal = false
	spec.Process.Args = args
	spec.Root.Path = "rootfs"
	spec.Hostname = id
	return id + "/rootfs", spec
}

// newContainer creates (not starts) a container and returns its host streams and pid.
func (v *testVM) newContainer(id string, spec *specs.Spec, rootfs string, noStdin bool) (*hostProcess, int, error) {
	v.t.Helper()
	hp := v.streams(spec.Process.Terminal, noStdin)
	var started agentproto.ProcessStarted
	err := v.call(agentproto.MsgNewContainer, agentproto.Container{ID: id, Rootfs: rootfs, Spec: spec, IO: hp.io}, &started)
	if err != nil {
		hp.reset()
	}
	return hp, started.Pid, err
}

func (v *testVM) exec(ctr, id string, p *specs.Process, rows, cols uint16) (*hostProcess, error) {
	v.t.Helper()
	hp := v.streams(p.Terminal, true)
	var started agentproto.ProcessStarted
	err := v.call(agentproto.MsgExecCmd, agentproto.ExecProcess{
		Container: ctr, ID: id, Process: p, IO: hp.io, ConsoleRows: rows, ConsoleCols: cols, ProgramHint: v.execHint,
	}, &started)
	if err != nil {
		hp.reset()
	}
	return hp, err
}

// execProcess is a process spec like the container's, with other args.
func execProcess(spec *specs.Spec, args ...string) *specs.Process {
	p := *spec.Process
	p.Args = args
	return &p
}

// waitExited waits for QEMU to exit by itself.
func (v *testVM) waitExited(d time.Duration) bool {
	select {
	case <-v.exited:
		return true
	case <-time.After(d):
		return false
	}
}

func remoteKind(err error) string {
	var re *agentproto.RemoteError
	if errors.As(err, &re) {
		return re.Kind
	}
	return ""
}
