package agent

import (
	"strings"
	"testing"
	"time"
)

func TestTracer(t *testing.T) {
	off := &tracer{}
	if st := off.begin("NEWCONTAINER"); st != nil {
		t.Fatalf("tracing off: begin gave a trace")
	}
	if off.record(time.Now(), "nsexec") {
		t.Errorf("tracing off: a libcontainer line was taken into a trace")
	}
	var nilTrace *stepTrace
	nilTrace.mark("must not panic")

	on := &tracer{on: true}
	st := on.begin("EXECCMD")
	st.start = st.start.Add(-2 * time.Millisecond)
	st.mark("decoded")
	if !on.record(time.Now(), "nsexec-0[7]: ~> nsexec stage-0") {
		t.Errorf("a libcontainer line was not recorded while an operation was traced")
	}
	var sink strings.Builder
	on.end(st, newLogger(&sink, false))
	if on.record(time.Now(), "late") {
		t.Errorf("a libcontainer line was recorded after the operation ended")
	}
	line := sink.String()
	for _, want := range []string{"TRACE EXECCMD: 2.", " decoded | 2.", " nsexec-0[7]: ~> nsexec stage-0\n"} {
		if !strings.Contains(line, want) {
			t.Errorf("trace line %q lacks %q", line, want)
		}
	}
}
