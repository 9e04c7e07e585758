package agent

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// A template is saved right after its warm-up, and every clone resumes whatever the guest
// kernel still had scheduled then and runs it for the first time: under TCG, translated
// again in each clone, on its pod's critical path. Two such pieces of work were measured
// (docs/performance.md, "Template clones, stop 14"), ~1 000 translation blocks (~8 ms) of
// every clone of a template saved before them, which on an idle host, where the template
// boots and warms up quickly, was the usual case:
//
//   - the TSC clocksource: with the frequency given (tsc_early_khz) but not known to the
//     CPU, Linux starts on "tsc-early" and registers "tsc" from a delayed work a second
//     after boot (tsc_refine_calibration_work), switching clocksources under stop_machine;
//   - the release of the warm-up container's cgroup (its controllers' state freed from
//     RCU callbacks and workqueues after the rmdir).
//
// settle waits for both with a deadline, polling: neither has an event to wait on.
const (
	settleTimeout = 3 * time.Second
	settlePoll    = 5 * time.Millisecond
)

// settleCheck reports whether one piece of deferred work is done.
type settleCheck struct {
	name string
	done func() bool
}

// snapshotSettleChecks are the checks of a template's guest (see the top).
func snapshotSettleChecks() []settleCheck {
	return []settleCheck{
		{"the TSC clocksource (still tsc-early)", func() bool {
			return clocksourceFinal("/sys/devices/system/clocksource/clocksource0/current_clocksource")
		}},
		{"dying cgroups released", func() bool { return noDyingCgroups(cgroupRoot + "/cgroup.stat") }},
	}
}

// settle polls checks until all are done or timeout passes; it returns how long it waited
// and the names of the checks still pending then, joined ("" when all are done).
func settle(checks []settleCheck, timeout, poll time.Duration) (time.Duration, string) {
	start := time.Now()
	for {
		var pending []string
		for _, c := range checks {
			if !c.done() {
				pending = append(pending, c.name)
			}
		}
		waited := time.Since(start)
		if len(pending) == 0 || waited >= timeout {
			return waited, strings.Join(pending, ", ")
		}
		time.Sleep(min(poll, timeout-waited))
	}
}

// clocksourceFinal tells whether the current clocksource (file) is not the interim
// tsc-early. A kernel without the file has nothing to wait for.
func clocksourceFinal(file string) bool {
	b, err := os.ReadFile(file)
	return err != nil || string(bytes.TrimSpace(b)) != "tsc-early"
}

// noDyingCgroups tells whether cgroup.stat (file) counts no dying descendant cgroups. An
// unreadable or unparsable file has nothing to wait for.
func noDyingCgroups(file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "nr_dying_descendants "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return err != nil || n == 0
		}
	}
	return true
}
