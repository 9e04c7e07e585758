package factory

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
	"github.com/runv-project/runv/logging"
)

func TestTemplateName(t *testing.T) {
	for _, tt := range []struct {
		cfg  hypervisor.Config
		want string
	}{
		{hypervisor.Config{}, "microvm-1c-128m"},
		{hypervisor.Config{Machine: hypervisor.MachineQ35, CPUs: 2, MemoryMiB: 512}, "q35-2c-512m"},
		{hypervisor.Config{Machine: hypervisor.MachineQ35, CPUs: 1, MemoryMiB: 256, MaxCPUs: 4, MaxMemoryMiB: 1024}, "q35-1c-256m-max4c-1024m"},
	} {
		if got := TemplateName(tt.cfg); got != tt.want || ValidateTemplateName(got) != nil {
			t.Errorf("TemplateName(%+v) = %q, want %q", tt.cfg, got, tt.want)
		}
	}
	for _, bad := range []string{"", ".x", "a/b", "..", strings.Repeat("a", 65), "a b"} {
		if err := ValidateTemplateName(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("name %q accepted", bad)
		}
	}
}

func TestTemplateCheck(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	made := TemplateInfo{
		Name:   "microvm-1c-128m",
		Kernel: FileFacts{"/k/vmlinux", 100, at}, Initrd: FileFacts{"/k/initrd", 50, at},
		QEMU: FileFacts{"/usr/bin/qemu", 10, at}, QEMUVersion: "QEMU emulator version 7.2.22",
		Machine: "microvm", MachineType: "microvm", Accel: "tcg", CPUs: 1, MemoryMiB: 128,
		AgentProtocol: agentproto.Version,
	}
	want := made
	want.Accel = hypervisor.AccelAuto
	if err := made.Check(want); err != nil {
		t.Fatalf("same facts refused: %v", err)
	}
	tests := []struct {
		name string
		mod  func(*TemplateInfo)
		msg  []string
	}{
		{"other kernel", func(w *TemplateInfo) { w.Kernel.Path = "/other/vmlinux" },
			[]string{"template microvm-1c-128m was made with kernel /k/vmlinux", "this pod uses /other/vmlinux", "recreate it with 'runv manage create-template --machine microvm --cpus 1 --memory 128'"}},
		{"kernel rebuilt", func(w *TemplateInfo) { w.Kernel.ModTime = at.Add(time.Second) }, []string{"kernel /k/vmlinux"}},
		{"initrd rebuilt", func(w *TemplateInfo) { w.Initrd.Size = 51 }, []string{"initrd /k/initrd (50 bytes", "(51 bytes"}},
		{"qemu upgraded", func(w *TemplateInfo) { w.QEMU.Size = 11 }, []string{"QEMU /usr/bin/qemu", "7.2.22"}},
		{"machine", func(w *TemplateInfo) { w.Machine = "q35" }, []string{"machine microvm, this pod uses q35", "--machine q35"}},
		{"accel", func(w *TemplateInfo) { w.Accel = "kvm" }, []string{"accelerator tcg, this pod uses kvm"}},
		{"memory", func(w *TemplateInfo) { w.MemoryMiB = 256 }, []string{"128 MiB", "--memory 256 --name microvm-1c-128m"}},
		{"params", func(w *TemplateInfo) { w.KernelParams = []string{"x=1"} }, []string{"kernel parameters"}},
		{"protocol", func(w *TemplateInfo) { w.AgentProtocol++ }, []string{"agent protocol"}},
	}
	for _, tt := range tests {
		w := want
		tt.mod(&w)
		err := made.Check(w)
		if !errors.Is(err, ErrTemplateStale) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%s: %v, want ErrTemplateStale", tt.name, err)
			continue
		}
		for _, m := range tt.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: %q does not say %q", tt.name, err, m)
			}
		}
	}
}

func TestLockPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".t.lock")
	ctx := context.Background()
	a, err := lockPath(ctx, path, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lockPath(ctx, path, false)
	if err != nil {
		t.Fatal("second shared lock:", err)
	}
	// An exclusive lock waits for both, and gives up with its context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := lockPath(short, path, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("exclusive lock under shared ones: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := lockPath(ctx, path, true)
		if err == nil {
			l.unlock()
		}
		got <- err
	}()
	a.unlock()
	b.unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exclusive lock not granted after the shared ones were released")
	}
	// A lock file removed by its holder (remove-template) is not trusted by a waiter.
	holder, err := lockPath(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		l, err := lockPath(ctx, path, true)
		if err == nil {
			var held, now unix.Stat_t
			unix.Fstat(int(l.f.Fd()), &held)
			if unix.Stat(path, &now) != nil || held.Ino != now.Ino {
				err = errors.New("waiter holds a lock on a removed file")
			}
			l.unlock()
		}
		got <- err
	}()
	os.Remove(path)
	holder.unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// A template directory that is not on tmpfs gets one, which remove-template --all unmounts.
func TestEnsureTmpfs(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting needs root")
	}
	dir := filepath.Join(t.TempDir(), "templates")
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(dir), &st); err != nil || st.Type == unix.TMPFS_MAGIC {
		t.Skip("the temporary directory is on tmpfs already")
	}
	mounted, err := ensureTmpfs(dir)
	if err != nil || !mounted {
		t.Fatalf("ensureTmpfs: %v, %v", mounted, err)
	}
	if again, err := ensureTmpfs(dir); err != nil || again {
		t.Fatalf("second ensureTmpfs mounted again: %v, %v", again, err)
	}
	if !ownTmpfs(dir) {
		t.Fatal("runv's tmpfs not recognised")
	}
	if _, err := RemoveAllTemplates(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if ownTmpfs(dir) {
		t.Error("tmpfs still mounted after RemoveAllTemplates")
	}
}

// --- real VMs: the QEMU launcher and the real agent ---

// vmEnv is what the VM tests share: kernel, agent initrd, a template directory on tmpfs.
type vmEnv struct {
	base        hypervisor.Config
	templateDir string
	scratch     string // short paths for VM sockets
}

func newVMEnv(t *testing.T) vmEnv {
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
func (e vmEnv) request(t *testing.T, id string) Request {
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
		if err := c.WaitReady(ctx); err != nil {
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

// logCapture collects a factory's log records.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func capturingContext(t *testing.T, timeout time.Duration) (context.Context, *logCapture) {
	t.Helper()
	lc := &logCapture{}
	ctx := logging.WithLogger(context.Background(), slog.New(slog.NewTextHandler(io.MultiWriter(lc, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	t.Cleanup(cancel)
	return ctx, lc
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
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
	info, err := ReadTemplate(e.templateDir, "microvm-1c-128m")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template: %+v", *info)
	if info.AgentProtocol != agentproto.Version || info.Accel != hypervisor.AccelTCG || info.MemoryAllocated == 0 || info.StateBytes == 0 {
		t.Errorf("template facts incomplete: %+v", *info)
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

// Clone start until the agent answered, and memory of clones vs cold boots: logged, for
// docs/templates.md. Skipped unless RUNV_TEMPLATE_BENCH=<runs>.
func TestTemplateMeasure(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("RUNV_TEMPLATE_BENCH"))
	if n <= 0 {
		t.Skip("set RUNV_TEMPLATE_BENCH=<runs> to measure")
	}
	e := newVMEnv(t)
	ctx, _ := capturingContext(t, 10*time.Minute)
	ctx = logging.WithLogger(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := CreateTemplate(ctx, &qemu.Launcher{}, e.base, CreateOptions{Dir: e.templateDir}); err != nil {
		t.Fatal(err)
	}
	tf, err := NewTemplate(&qemu.Launcher{}, e.base, TemplateOptions{Dir: e.templateDir})
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	df := NewDirect(&qemu.Launcher{}, e.base)
	seq := 0
	// run starts a VM, connects to its agent (handshake only), and reports GetVM's duration
	// and the total until the agent answered.
	run := func(f Factory) (hypervisor.VM, *agentclient.Client, time.Duration, time.Duration) {
		seq++
		req := e.request(t, fmt.Sprintf("m%d", seq))
		start := time.Now()
		vm, err := f.GetVM(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { vm.Kill() })
		got := time.Since(start)
		ch, err := vm.Channels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := agentclient.New(ch, agentclient.Options{PodID: req.ID})
		t.Cleanup(func() { c.Close() })
		if !vm.Restored() {
			if err := c.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Handshake(ctx); err != nil {
			t.Fatal(err)
		}
		return vm, c, got, time.Since(start)
	}
	stats := func(ds []time.Duration) string {
		slices.Sort(ds)
		return fmt.Sprintf("min %v median %v max %v", ds[0].Round(100*time.Microsecond), ds[len(ds)/2].Round(100*time.Microsecond), ds[len(ds)-1].Round(100*time.Microsecond))
	}
	for _, k := range []struct {
		name string
		f    Factory
	}{{"clone", tf}, {"direct", df}} {
		var gets, totals []time.Duration
		for range n {
			vm, c, got, total := run(k.f)
			gets, totals = append(gets, got), append(totals, total)
			c.Close()
			vm.Kill()
		}
		t.Logf("%-6s: GetVM (qemu start .. running) %s; until the agent answered %s (n=%d)", k.name, stats(gets), stats(totals), n)
	}
	// Memory: 5 VMs of each kind with a started pod, PSS from smaps_rollup.
	for _, k := range []struct {
		name string
		f    Factory
	}{{"clone", tf}, {"direct", df}} {
		var vms []hypervisor.VM
		for range 5 {
			vm, c, _, _ := run(k.f)
			if err := c.Call(ctx, agentproto.MsgStartPod, agentproto.Pod{ID: vm.ID(), TimeUnixNano: time.Now().UnixNano()}, nil); err != nil {
				t.Fatal(err)
			}
			vms = append(vms, vm)
		}
		var pss, rss int64
		for _, vm := range vms {
			p, r := smapsRollup(t, vm.Pid())
			pss, rss = pss+p, rss+r
		}
		t.Logf("%-6s: 5 VMs: PSS %.1f MiB total (%.1f each), RSS %.1f MiB total", k.name,
			float64(pss)/1024, float64(pss)/1024/5, float64(rss)/1024)
		for _, vm := range vms {
			vm.Kill()
		}
	}
	info, _ := ReadTemplate(e.templateDir, TemplateName(e.base))
	t.Logf("template: RAM file %.1f MiB allocated in tmpfs, state %d KiB, boot %d ms, save %d ms",
		float64(info.MemoryAllocated)/(1<<20), info.StateBytes>>10, info.BootMillis, info.SaveMillis)
}

// smapsRollup returns a process's Pss and Rss in KiB.
func smapsRollup(t *testing.T, pid int) (pss, rss int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Pss:":
			pss = v
		case "Rss:":
			rss = v
		}
	}
	return pss, rss
}

// A failed automatic creation is not retried by every pod, until something changed.
func TestRecentFailure(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	for _, f := range []string{kernel, initrd} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := hypervisor.Config{Kernel: kernel, Initrd: initrd, QEMU: "/bin/true"}
	if err := recentFailure(dir, "t", cfg); err != nil {
		t.Fatalf("no failure recorded: %v", err)
	}
	recordFailure(dir, "t", cfg, errors.New("agent never answered"))
	err := recentFailure(dir, "t", cfg)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "agent never answered") ||
		!strings.Contains(err.Error(), "runv manage create-template") {
		t.Fatalf("recent failure: %v", err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(initrd, later, later); err != nil {
		t.Fatal(err)
	}
	if err := recentFailure(dir, "t", cfg); err != nil {
		t.Errorf("a new initrd is worth another try: %v", err)
	}
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
