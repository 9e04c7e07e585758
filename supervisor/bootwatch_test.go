package supervisor

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/testbuf"
	"github.com/runv-project/runv/logging"
)

// monitoredVM is an idle VM with a console log and a monitor that counts its queries.
type monitoredVM struct {
	idleVM
	console string
	queries atomic.Int32
}

func (v *monitoredVM) ConsoleLog() string { return v.console }
func (v *monitoredVM) RunState(context.Context) (string, error) {
	v.queries.Add(1)
	return "running", nil
}

// A boot whose agent is late is reported while it waits — the step, QEMU's run state, the
// console's last lines — and again when the step ends; a prompt boot logs no warning.
func TestSlowBootIsReported(t *testing.T) {
	for _, tc := range []struct {
		name     string
		late     bool
		wantWarn bool
	}{
		{"agent late", true, true},
		{"agent prompt", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			console := filepath.Join(dir, "console.log")
			if err := os.WriteFile(console, []byte("[    0.29] PCI: Fatal\n[    1.70] runv-agent: PID 1 up\n[    1.90] runv-agent: READY; boot steps: ...\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			vm := &monitoredVM{idleVM: idleVM{done: make(chan struct{})}, console: console}
			release := make(chan struct{})
			if !tc.late {
				close(release)
			}
			var logs testbuf.Buffer
			ctx := logging.WithLogger(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)))
			s, err := New(ctx, Config{
				PodID: "p", Dir: filepath.Join(dir, "pod"), Factory: vmFactory{vm}, SlowBootAfter: 100 * time.Millisecond,
				connect: func(_ context.Context, _ hypervisor.VM, _ string, enter func(string)) (guestAgent, error) {
					enter("version handshake (GETVERSION)")
					<-release
					return newFakeAgent(), nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close(context.Background()) })
			if tc.late {
				deadline := time.Now().Add(30 * time.Second)
				for !strings.Contains(logs.String(), "the guest agent has not answered yet") {
					if time.Now().After(deadline) {
						t.Fatalf("no warning about the late agent; log:\n%s", logs.String())
					}
					time.Sleep(10 * time.Millisecond) // a poll with a deadline
				}
				close(release)
			}
			wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.waitReady(wctx); err != nil {
				t.Fatal(err)
			}
			out := logs.String()
			warned := strings.Contains(out, "the guest agent has not answered yet")
			if warned != tc.wantWarn {
				t.Fatalf("warned = %v, want %v; log:\n%s", warned, tc.wantWarn, out)
			}
			if !tc.wantWarn {
				if vm.queries.Load() != 0 {
					t.Errorf("a prompt boot queried the monitor %d times", vm.queries.Load())
				}
				return
			}
			for _, want := range []string{
				`step="version handshake (GETVERSION)"`, "vm_state=running",
				`console_tail="[    0.29] PCI: Fatal | [    1.70] runv-agent: PID 1 up | [    1.90] runv-agent: READY; boot steps: ..."`,
				`msg="boot: the slow step ended"`, "step_took=",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("log lacks %s:\n%s", want, out)
				}
			}
			if vm.queries.Load() == 0 {
				t.Error("the warning did not query the VM's monitor")
			}
		})
	}
}

// consoleTail keeps the last lines of a console log, drops a line cut by its window, and
// says why when there is nothing to show.
func TestConsoleTail(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	long := strings.Repeat("x", consoleTailBytes) + "\nlast\n"
	for _, tc := range []struct {
		name, path, want string
	}{
		{"three of four", write("four", "a\nb\nc\nd\n"), "b | c | d"},
		{"no trailing newline", write("open", "a\nb"), "a | b"},
		{"empty", write("empty", ""), "(empty)"},
		{"cut line dropped", write("long", long), "last"},
		{"missing", filepath.Join(dir, "none"), "(open " + filepath.Join(dir, "none") + ": no such file or directory)"},
		{"no path", "", "(no console log)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := consoleTail(tc.path, 3); got != tc.want {
				t.Errorf("consoleTail = %q, want %q", got, tc.want)
			}
		})
	}
}
