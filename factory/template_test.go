package factory

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
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

// TestValidTemplateNameAsTheRule: the name check accepts exactly what the documented rule,
// written as a regular expression, accepts.
func TestValidTemplateNameAsTheRule(t *testing.T) {
	rule := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)
	names := []string{"", "a", "Z9", "microvm-1c-128m", "q35-1c-256m-max4c-1024m", "a.b_c+d-e",
		".x", "_x", "+x", "-x", "a/b", "..", "a b", "a\x00b", "é", "a\nb", "x:y", "x@y",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 65), "a" + strings.Repeat("-", 63)}
	for c := 0; c < 256; c++ {
		names = append(names, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}))
	}
	for _, n := range names {
		if got, want := validTemplateName(n), rule.MatchString(n); got != want {
			t.Errorf("validTemplateName(%q) = %v, the rule says %v", n, got, want)
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

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
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
