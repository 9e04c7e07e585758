//go:build integration

package factory

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
	"github.com/runv-project/runv/internal/testbuf"
	"github.com/runv-project/runv/logging"
)

// vmEnv is what the VM tests share: kernel, agent initrd, a template directory on tmpfs.
type vmEnv struct {
	base        hypervisor.Config
	templateDir string
	scratch     string // short paths for VM sockets
}

func newVMEnv(t testing.TB) vmEnv {
	t.Helper()
	qemutest.RequireVM(t)
	e := vmEnv{
		base: hypervisor.Config{
			Kernel: qemutest.Kernel(t), Initrd: qemutest.AgentInitrd(t),
			Accel: hypervisor.AccelTCG, CPUs: 1, MemoryMiB: 128,
		},
		scratch: qemutest.Dir(t),
	}
	d, err := os.MkdirTemp("/dev/shm", "runv-ftmpl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	e.templateDir = d
	return e
}

// request makes the directories of a VM request.
func (e vmEnv) request(t testing.TB, id string) Request {
	t.Helper()
	req := Request{ID: id, Dir: filepath.Join(e.scratch, id, "vm"), ShareDir: filepath.Join(e.scratch, id, "share")}
	for _, d := range []string{req.Dir, req.ShareDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return req
}

// startPod connects to vm's agent as the supervisor does (READY only for cold boots),
// starts the pod with the host's time and fresh entropy, and pings it.
func startPod(t *testing.T, ctx context.Context, vm hypervisor.VM) *agentclient.Client {
	t.Helper()
	ch, err := vm.Channels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := agentclient.New(ch, agentclient.Options{PodID: vm.ID()})
	t.Cleanup(func() { c.Close() })
	if !vm.Restored() {
		if _, err := c.WaitReady(ctx); err != nil {
			t.Fatalf("%s: %v (console: %s)", vm.ID(), err, consoleTail(vm))
		}
	}
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatalf("%s: %v (console: %s)", vm.ID(), err, consoleTail(vm))
	}
	entropy := make([]byte, 64)
	rand.Read(entropy)
	if err := c.Call(ctx, agentproto.MsgStartPod, agentproto.Pod{
		ID: vm.ID(), Hostname: vm.ID(), ShareTag: agentproto.ShareTag,
		TimeUnixNano: time.Now().UnixNano(), Entropy: entropy,
	}, nil); err != nil {
		t.Fatalf("%s: STARTPOD: %v (console: %s)", vm.ID(), err, consoleTail(vm))
	}
	if err := c.Call(ctx, agentproto.MsgPing, nil, nil); err != nil {
		t.Fatalf("%s: PING: %v", vm.ID(), err)
	}
	return c
}

func consoleTail(vm hypervisor.VM) string {
	b, _ := os.ReadFile(vm.ConsoleLog())
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return string(b)
}

func capturingContext(t *testing.T, timeout time.Duration) (context.Context, *testbuf.Buffer) {
	t.Helper()
	lc := &testbuf.Buffer{}
	ctx := logging.WithLogger(context.Background(), slog.New(slog.NewTextHandler(io.MultiWriter(lc, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	t.Cleanup(cancel)
	return ctx, lc
}

// The template is made on first use, once, although two pods ask for it at the same time;
// both get clones whose agents answer, and pods after them clone at once.
func TestTemplateFactoryClones(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx, logs := capturingContext(t, 3*time.Minute)
	f, err := NewTemplate(&qemu.Launcher{}, e.base, TemplateOptions{Dir: e.templateDir, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	vms := make([]hypervisor.VM, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range 2 {
		req := e.request(t, fmt.Sprintf("clone%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = f.GetVM(ctx, req)
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { vms[i].Kill() })
	}
	if n := strings.Count(logs.String(), "booting template VM"); n != 1 {
		t.Errorf("template booted %d times, want once:\n%s", n, logs)
	}
	if strings.Contains(logs.String(), "template not used") {
		t.Errorf("fell back to direct boot:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "template warmed up") {
		t.Errorf("the template was not warmed up before it was saved:\n%s", logs)
	}
	info, err := ReadTemplate(e.templateDir, "microvm-1c-128m")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template: %+v", *info)
	if info.AgentProtocol != agentproto.Version || info.Accel != hypervisor.AccelTCG || info.MemoryAllocated == 0 || info.StateBytes == 0 {
		t.Errorf("template facts incomplete: %+v", *info)
	}
	// runv's QEMU (it keeps the share mounted) saves the warm-up's translations too.
	if info.ShareMounted && info.TranslationsBytes == 0 {
		t.Errorf("template of runv's QEMU saved without translations: %+v\n%s", *info, logs)
	}
	if !strings.HasPrefix(info.QEMUVersion, "QEMU emulator version") {
		t.Errorf("qemu version %q", info.QEMUVersion)
	}

	// A later pod clones the existing template.
	start := time.Now()
	vms[2], err = f.GetVM(ctx, e.request(t, "clone2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vms[2].Kill() })
	got := time.Since(start)
	startPod(t, ctx, vms[2])
	t.Logf("clone: GetVM %v, agent answered (handshake, STARTPOD, PING) %v after", got, time.Since(start)-got)
	for i, vm := range vms {
		if !vm.Restored() {
			t.Errorf("vm %d was not cloned", i)
		}
		if i < 2 {
			startPod(t, ctx, vm)
		}
	}
	// The template was saved with its host connected, and each clone's host connected
	// before the clone ran: no agent saw its host go away (it would have logged so, and
	// waited for a reconnect).
	consoles := []string{filepath.Join(e.templateDir, "microvm-1c-128m", "console.log")}
	for _, vm := range vms {
		consoles = append(consoles, vm.ConsoleLog())
	}
	for _, c := range consoles {
		b, err := os.ReadFile(c)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "host disconnected") {
			t.Errorf("%s: the agent saw its host go away:\n%s", c, b)
		}
	}
	for _, vm := range vms {
		vm.Kill()
	}
	if pids := qemutest.QEMUsFor(e.scratch); len(pids) > 0 {
		t.Errorf("qemu left running: %v", pids)
	}
	if pids := qemutest.QEMUsFor(e.templateDir); len(pids) > 0 {
		t.Errorf("template qemu left running: %v", pids)
	}
}

// A template made with another kernel is refused with a clear message, and the pod boots
// directly instead.
func TestTemplateStaleFallsBackToDirect(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx, logs := capturingContext(t, 3*time.Minute)
	// Another kernel: the same image under another path.
	other := filepath.Join(e.scratch, "vmlinux-other")
	b, err := os.ReadFile(e.base.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, b, 0o644); err != nil {
		t.Fatal(err)
	}
	old := e.base
	old.Kernel = other
	if _, err := CreateTemplate(ctx, &qemu.Launcher{}, old, CreateOptions{Dir: e.templateDir}); err != nil {
		t.Fatal(err)
	}

	f, err := NewTemplate(&qemu.Launcher{}, e.base, TemplateOptions{Dir: e.templateDir, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vm, err := f.GetVM(ctx, e.request(t, "stale"))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if vm.Restored() {
		t.Fatal("a stale template was cloned")
	}
	for _, want := range []string{
		"template not used: booting directly",
		"template microvm-1c-128m was made with kernel " + other,
		"this pod uses " + e.base.Kernel,
		"recreate it with 'runv manage create-template",
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, logs)
		}
	}
	// The directly booted VM works, and the stale template was left alone.
	startPod(t, ctx, vm)
	if info, err := ReadTemplate(e.templateDir, "microvm-1c-128m"); err != nil || info.Kernel.Path != other {
		t.Errorf("stale template touched: %+v, %v", info, err)
	}
}

// Removing (and recreating) the template under a running clone does not disturb the clone:
// it maps the RAM file privately.
func TestTemplateRemovedUnderClone(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx, _ := capturingContext(t, 3*time.Minute)
	if _, err := CreateTemplate(ctx, &qemu.Launcher{}, e.base, CreateOptions{Dir: e.templateDir, Name: "t1"}); err != nil {
		t.Fatal(err)
	}
	f, err := NewTemplate(&qemu.Launcher{}, e.base, TemplateOptions{Dir: e.templateDir, Name: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vm, err := f.GetVM(ctx, e.request(t, "survivor"))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if !vm.Restored() {
		t.Fatal("not cloned")
	}
	c := startPod(t, ctx, vm)

	if err := RemoveTemplate(ctx, e.templateDir, "t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTemplate(e.templateDir, "t1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("template still there: %v", err)
	}
	if err := RemoveTemplate(ctx, e.templateDir, "t1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second removal: %v", err)
	}
	// Memory the clone has not touched yet still comes from the removed file: make the
	// guest use plenty of it (the agent's PINGs allocate; a page cache full of the
	// template's RAM is what a crash would show).
	for i := range 50 {
		if err := c.Call(ctx, agentproto.MsgPing, nil, nil); err != nil {
			t.Fatalf("ping %d after the template was removed: %v (console: %s)", i, err, consoleTail(vm))
		}
	}
	// Recreating it (a new RAM file, renamed into place) does not disturb the clone either,
	// and clears what a creation that died half-way left (but not another template's).
	for _, d := range []string{".new-t1@123", ".old-t1@abc", ".new-t1-2@456"} {
		if err := os.Mkdir(filepath.Join(e.templateDir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := CreateTemplate(ctx, &qemu.Launcher{}, e.base, CreateOptions{Dir: e.templateDir, Name: "t1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, agentproto.MsgPing, nil, nil); err != nil {
		t.Fatalf("ping after the template was recreated: %v", err)
	}
	for d, want := range map[string]bool{".new-t1@123": false, ".old-t1@abc": false, ".new-t1-2@456": true} {
		if _, err := os.Stat(filepath.Join(e.templateDir, d)); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", d, err == nil, want)
		}
	}
	select {
	case <-vm.Done():
		t.Fatalf("clone exited (console: %s)", consoleTail(vm))
	default:
	}
	// Without Create, a missing template means direct boots.
	names, err := RemoveAllTemplates(ctx, e.templateDir)
	if err != nil || len(names) != 1 {
		t.Fatalf("RemoveAllTemplates: %v, %v", names, err)
	}
	direct, err := f.GetVM(ctx, e.request(t, "nontemplate"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Kill()
	if direct.Restored() {
		t.Error("cloned from a removed template")
	}
}

// BenchmarkVMUntilAgentAnswers is the time from asking the factory for a VM until its
// agent answered the version handshake, for a template clone and for a cold boot: what a
// template saves a pod. `make bench` runs it (bench/run.sh); memory per pod of each kind is
// measured there too.
func BenchmarkVMUntilAgentAnswers(b *testing.B) {
	e := newVMEnv(b)
	ctx, cancel := context.WithTimeout(logging.WithLogger(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil))), 30*time.Minute)
	defer cancel()
	if _, err := CreateTemplate(ctx, &qemu.Launcher{}, e.base, CreateOptions{Dir: e.templateDir}); err != nil {
		b.Fatal(err)
	}
	tf, err := NewTemplate(&qemu.Launcher{}, e.base, TemplateOptions{Dir: e.templateDir})
	if err != nil {
		b.Fatal(err)
	}
	defer tf.Close()
	for _, k := range []struct {
		name string
		f    Factory
	}{{"clone", tf}, {"direct", NewDirect(&qemu.Launcher{}, e.base)}} {
		b.Run(k.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				req := e.request(b, fmt.Sprintf("%s%d", k.name, i))
				b.StartTimer()
				vm, err := k.f.GetVM(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				err = handshake(ctx, vm)
				b.StopTimer()
				vm.Kill()
				<-vm.Done()
				if err != nil {
					b.Fatalf("%s: %v (console: %s)", req.ID, err, consoleTail(vm))
				}
				b.StartTimer()
			}
		})
	}
}

// handshake connects to vm's agent and waits until it answered the version handshake
// (after READY for a cold boot).
func handshake(ctx context.Context, vm hypervisor.VM) error {
	ch, err := vm.Channels(ctx)
	if err != nil {
		return err
	}
	c := agentclient.New(ch, agentclient.Options{PodID: vm.ID()})
	defer c.Close()
	if !vm.Restored() {
		if _, err := c.WaitReady(ctx); err != nil {
			return err
		}
	}
	_, err = c.Handshake(ctx)
	return err
}

// A template that cannot be made: the pod boots directly, the guest console is quoted, and
// the next pod does not try again.
func TestTemplateCreationFailure(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx, logs := capturingContext(t, 2*time.Minute)
	base := e.base
	base.KernelParams = []string{"rdinit=/nonexistent"} // the guest panics: no init
	f, err := NewTemplate(&qemu.Launcher{}, base, TemplateOptions{Dir: e.templateDir, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 2 {
		vm, err := f.GetVM(ctx, e.request(t, fmt.Sprintf("fail%d", i)))
		if err == nil {
			// The direct boot started QEMU; its guest panics like the template's did.
			vm.Kill()
		}
	}
	text := logs.String()
	if n := strings.Count(text, "booting template VM"); n != 1 {
		t.Errorf("template boots: %d, want 1:\n%s", n, text)
	}
	for _, want := range []string{"guest console: [", "Kernel panic - not syncing", "not retried automatically"} {
		if !strings.Contains(text, want) {
			t.Errorf("log does not say %q:\n%s", want, text)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(e.templateDir, ".new-*")); len(left) > 0 {
		t.Errorf("staging left behind: %v", left)
	}
}
