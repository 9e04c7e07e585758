package agent

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// logSink is where every agent log line goes: /dev/console in the guest, which the host
// captures to the VM's console log file. One mutex keeps lines whole.
type logSink struct {
	mu    sync.Mutex
	w     io.Writer
	debug bool
	pod   atomic.Pointer[string] // set by STARTPOD; every line carries it from then on
}

// logger writes lines prefixed with guest uptime and the ids it was derived with
// (pod, container, process), so one console log can be read per container.
type logger struct {
	sink   *logSink
	prefix string // " ctr=<id> proc=<id>", may be empty
}

func newLogger(w io.Writer, debug bool) *logger {
	return &logger{sink: &logSink{w: w, debug: debug}}
}

// setOutput redirects the sink (the console is reopened after devtmpfs is mounted).
func (l *logger) setOutput(w io.Writer) {
	l.sink.mu.Lock()
	l.sink.w = w
	l.sink.mu.Unlock()
}

func (l *logger) setDebug(on bool) {
	l.sink.mu.Lock()
	l.sink.debug = on
	l.sink.mu.Unlock()
}

func (l *logger) debugEnabled() bool {
	l.sink.mu.Lock()
	defer l.sink.mu.Unlock()
	return l.sink.debug
}

func (l *logger) setPod(id string) { l.sink.pod.Store(&id) }

// with returns a logger whose lines also carry key=value.
func (l *logger) with(key, value string) *logger {
	return &logger{sink: l.sink, prefix: l.prefix + " " + key + "=" + value}
}

func (l *logger) Infof(format string, args ...any)  { l.output("", format, args...) }
func (l *logger) Errorf(format string, args ...any) { l.output("ERROR: ", format, args...) }

// Debugf logs only with runv.debug=1: under TCG every console byte is an emulated port
// write, so the default output stays short.
func (l *logger) Debugf(format string, args ...any) {
	if l.debugEnabled() {
		l.output("", format, args...)
	}
}

// logf adapts the logger to printf-style callbacks (the stream mux).
func (l *logger) logf(format string, args ...any) { l.Infof(format, args...) }

func (l *logger) output(level, format string, args ...any) {
	var b strings.Builder
	b.Write(appendUptime(make([]byte, 0, 12), bootNanos()))
	b.WriteString(" runv-agent")
	if p := l.sink.pod.Load(); p != nil {
		b.WriteString(" pod=" + *p)
	}
	b.WriteString(l.prefix)
	b.WriteString(": ")
	b.WriteString(level)
	fmt.Fprintf(&b, format, args...)
	if !strings.HasSuffix(b.String(), "\n") {
		b.WriteByte('\n')
	}
	l.sink.mu.Lock()
	defer l.sink.mu.Unlock()
	if l.sink.w != nil {
		_, _ = io.WriteString(l.sink.w, b.String())
	}
}

// appendUptime appends "[%10.4f]" of ns nanoseconds in seconds, as fmt would print it, with
// integer arithmetic: fmt's float formatting is ~100 translation blocks that a guest, and a
// template clone again, otherwise runs only for its first console line.
func appendUptime(b []byte, ns int64) []byte {
	tenths := (max(ns, 0) + 50_000) / 100_000 // units of 0.1 ms, rounded half up
	digits := strconv.AppendInt(nil, tenths/10_000, 10)
	digits = append(digits, '.')
	frac := strconv.AppendInt(nil, 10_000+tenths%10_000, 10)
	digits = append(digits, frac[1:]...)
	b = append(b, '[')
	for i := len(digits); i < 10; i++ {
		b = append(b, ' ')
	}
	b = append(b, digits...)
	return append(b, ']')
}

// bootNanos is CLOCK_BOOTTIME in nanoseconds (see uptime).
func bootNanos() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// uptime is CLOCK_BOOTTIME in seconds, the same base as the kernel's printk timestamps, so
// agent and kernel lines interleave sensibly in the console log.
func uptime() float64 { return float64(bootNanos()) / 1e9 }

// setupLogrus routes libcontainer's logs (it logs through logrus, including the errors
// that `runv-agent init` forwards from inside the container) into the agent's log.
// With a tracer, libcontainer logs at debug level, and its lines go into the running trace
// instead of the console.
//
// The standard logger's fields are assigned, not set through its locked setters: this
// runs in PID 1 before any other goroutine, and in a cold guest each setter and its
// deferred unlock is code translated once for nothing (~40 blocks).
func setupLogrus(l *logger, debug bool, tr *tracer) {
	std := logrus.StandardLogger()
	std.Out = io.Discard
	std.Formatter = &logrus.TextFormatter{DisableTimestamp: true}
	std.Level = logrus.WarnLevel
	if debug || tr.on {
		std.Level = logrus.DebugLevel
	}
	std.Hooks = logrus.LevelHooks{}
	std.Hooks.Add(&logrusHook{log: l.with("lib", "libcontainer"), debug: debug, trace: tr})
}

// logrusHook forwards logrus entries; the formatter output itself is discarded so that
// every line gets the agent's prefix.
type logrusHook struct {
	log   *logger
	debug bool
	trace *tracer
}

func (h *logrusHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *logrusHook) Fire(e *logrus.Entry) error {
	msg := e.Message
	for k, v := range e.Data {
		msg += fmt.Sprintf(" %s=%v", k, v)
	}
	if h.trace.record(e.Time, msg) || (e.Level > logrus.WarnLevel && !h.debug) {
		return nil
	}
	h.log.Infof("%s: %s", e.Level, msg)
	return nil
}
