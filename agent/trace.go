package agent

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// stepTrace records when the steps of one container operation (NEWCONTAINER, EXECCMD,
// STARTCONTAINER) happened, for runv.trace=1: the agent's own steps, and libcontainer's
// debug lines, which include those `runv-agent init` and its nsexec stages send from inside
// the container being made (they arrive over libcontainer's log pipe as they happen). One
// line per operation goes to the console once it is done, so that the console, slow under
// TCG, is not written while the steps are timed. docs/performance.md reads these lines.
type stepTrace struct {
	what  string
	start time.Time

	mu    sync.Mutex
	steps []traceStep
}

type traceStep struct {
	at   time.Duration
	what string
}

// tracer hands out traces while runv.trace=1 is set and routes libcontainer's lines into
// the one running. Operations that overlap share the most recent trace's libcontainer
// lines; the trace is a measuring tool, not an audit log.
type tracer struct {
	on      bool
	current atomic.Pointer[stepTrace]
}

// begin starts a trace of an operation, or returns nil (every method of a nil trace is a
// no-op) when tracing is off.
func (t *tracer) begin(what string) *stepTrace {
	if t == nil || !t.on {
		return nil
	}
	st := &stepTrace{what: what, start: time.Now()}
	t.current.Store(st)
	return st
}

// end stops routing libcontainer's lines into st and logs it.
func (t *tracer) end(st *stepTrace, log *logger) {
	if st == nil {
		return
	}
	t.current.CompareAndSwap(st, nil)
	log.Infof("TRACE %s", st)
}

// record adds a libcontainer line to the running trace; false when there is none.
func (t *tracer) record(at time.Time, msg string) bool {
	if t == nil {
		return false
	}
	st := t.current.Load()
	if st == nil {
		return false
	}
	st.markAt(at, msg)
	return true
}

func (st *stepTrace) mark(what string) {
	if st != nil {
		st.markAt(time.Now(), what)
	}
}

func (st *stepTrace) markAt(at time.Time, what string) {
	st.mu.Lock()
	st.steps = append(st.steps, traceStep{at: at.Sub(st.start), what: what})
	st.mu.Unlock()
}

// String is "<what>: <ms> <step> | <ms> <step> ...", milliseconds since the operation began.
func (st *stepTrace) String() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var b strings.Builder
	b.WriteString(st.what + ":")
	for i, s := range st.steps {
		if i > 0 {
			b.WriteString(" |")
		}
		fmt.Fprintf(&b, " %.1f %s", float64(s.at.Microseconds())/1000, s.what)
	}
	return b.String()
}
