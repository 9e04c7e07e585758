package supervisor

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// defaultSlowBootAfter is how long a boot may wait for its guest agent before the daemon
// says so. A cold boot answers in 1-9 s on a loaded 2-core host; a stall that got past
// this once took 65 s (docs/reliability.md, "A boot whose agent answers late").
const defaultSlowBootAfter = 15 * time.Second

// runStater reports the VM's run state as its monitor sees it ("running", "paused", ...).
// hypervisor/qemu's VMs do: the answer comes from QEMU's main loop, so it also proves
// that loop is alive.
type runStater interface {
	RunState(ctx context.Context) (string, error)
}

// unwrapper is a VM that wraps another (a pool's CachedVM).
type unwrapper interface{ Unwrap() hypervisor.VM }

// runStaterOf finds the runStater in vm or in the VMs it wraps.
func runStaterOf(vm hypervisor.VM) (runStater, bool) {
	for vm != nil {
		if rs, ok := vm.(runStater); ok {
			return rs, true
		}
		u, ok := vm.(unwrapper)
		if !ok {
			break
		}
		vm = u.Unwrap()
	}
	return nil, false
}

// bootWatch names the step a boot is in and, once the boot took longer than slowAfter,
// logs at warning what the guest showed by then: the step it waits in, the VM's run
// state, the last lines of its console. It says again every slowAfter while the boot
// waits, and once more when the step it warned about ended, with how long that took.
type bootWatch struct {
	vm        hypervisor.VM
	slowAfter time.Duration
	start     time.Time
	done      chan struct{}
	stopOnce  sync.Once

	mu       sync.Mutex
	step     string
	stepAt   time.Time
	warnedOn string // the step the last warning was about, "" if none
}

func newBootWatch(vm hypervisor.VM, slowAfter time.Duration) *bootWatch {
	now := time.Now()
	return &bootWatch{vm: vm, slowAfter: slowAfter, start: now, stepAt: now, done: make(chan struct{})}
}

// enter records that the boot now waits in step.
func (w *bootWatch) enter(ctx context.Context, step string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.endStepLocked(ctx)
	w.step, w.stepAt = step, time.Now()
}

// endStepLocked logs the end of a step a warning was about.
func (w *bootWatch) endStepLocked(ctx context.Context) {
	if w.warnedOn == "" || w.warnedOn != w.step {
		return
	}
	logging.G(ctx).Warn("boot: the slow step ended", "step", w.step,
		"step_took", time.Since(w.stepAt).Round(time.Millisecond), "boot_so_far", time.Since(w.start).Round(time.Millisecond))
	w.warnedOn = ""
}

// run warns about a slow boot until stop.
func (w *bootWatch) run(ctx context.Context) {
	t := time.NewTimer(w.slowAfter)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		w.warn(ctx)
		t.Reset(w.slowAfter)
	}
}

func (w *bootWatch) warn(ctx context.Context) {
	w.mu.Lock()
	step, stepAt := w.step, w.stepAt
	w.mu.Unlock()
	state := "unknown (the VM has no monitor)"
	if rs, ok := runStaterOf(w.vm); ok {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := rs.RunState(qctx)
		cancel()
		if err != nil {
			state = "query failed: " + err.Error()
		} else {
			state = st
		}
	}
	logging.G(ctx).Warn("boot: the guest agent has not answered yet", "step", step,
		"step_waited", time.Since(stepAt).Round(time.Millisecond), "boot_so_far", time.Since(w.start).Round(time.Millisecond),
		"vm_pid", w.vm.Pid(), "vm_state", state, "console_tail", consoleTail(w.vm.ConsoleLog(), 3))
	w.mu.Lock()
	if w.step == step {
		w.warnedOn = step
	}
	w.mu.Unlock()
}

// stop ends the watch; a step warned about is logged as ended.
func (w *bootWatch) stop(ctx context.Context) {
	w.stopOnce.Do(func() {
		close(w.done)
		w.mu.Lock()
		w.endStepLocked(ctx)
		w.mu.Unlock()
	})
}

// consoleTailBytes bounds what consoleTail reads: the agent's lines are short.
const consoleTailBytes = 4096

// consoleTail returns the last n lines of the console log at path, joined with " | ", or
// why it could not be read.
func consoleTail(path string, n int) string {
	if path == "" {
		return "(no console log)"
	}
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	cut := false
	if st, err := f.Stat(); err == nil && st.Size() > consoleTailBytes {
		if _, err := f.Seek(st.Size()-consoleTailBytes, io.SeekStart); err != nil {
			return "(" + err.Error() + ")"
		}
		cut = true
	}
	b, err := io.ReadAll(io.LimitReader(f, consoleTailBytes))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(string(bytes.TrimRight(b, "\n")), "\n")
	if cut && len(lines) > 1 {
		lines = lines[1:] // the window began inside it
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "(empty)"
	}
	return strings.Join(lines, " | ")
}
