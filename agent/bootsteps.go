package agent

import (
	"fmt"
	"strings"
	"time"
)

// bootSteps times the agent's steps from its start to READY, so that the console says
// where a cold boot's time goes after the kernel (docs/performance.md, "Direct boot").
type bootSteps struct {
	start float64 // uptime (s) when the agent's main began: the kernel and the Go runtime's start are before
	last  time.Time
	steps []string
}

func newBootSteps() *bootSteps { return &bootSteps{start: uptime(), last: time.Now()} }

// done records the step that just ended.
func (b *bootSteps) done(name string) {
	now := time.Now()
	b.steps = append(b.steps, fmt.Sprintf("%s %.1fms", name, float64(now.Sub(b.last).Microseconds())/1000))
	b.last = now
}

func (b *bootSteps) String() string {
	return fmt.Sprintf("main at %.4f s, then %s", b.start, strings.Join(b.steps, ", "))
}
