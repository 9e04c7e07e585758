package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSettleChecksReadTheKernelFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name  string
		check func(string) bool
		file  string // "" for a file that does not exist
		done  bool
	}{
		{"interim clocksource", clocksourceFinal, "tsc-early\n", false},
		{"final clocksource", clocksourceFinal, "tsc\n", true},
		{"kvm clocksource", clocksourceFinal, "kvm-clock\n", true},
		{"no clocksource file", clocksourceFinal, "", true},
		{"dying cgroups", noDyingCgroups, "nr_descendants 3\nnr_dying_descendants 1\n", false},
		{"no dying cgroups", noDyingCgroups, "nr_descendants 3\nnr_dying_descendants 0\n", true},
		{"cgroup.stat without the count", noDyingCgroups, "nr_descendants 3\n", true},
		{"no cgroup.stat", noDyingCgroups, "", true},
	}
	for i, tc := range cases {
		p := filepath.Join(dir, "missing")
		if tc.file != "" {
			p = write(filepath.Base(t.Name())+string(rune('a'+i)), tc.file)
		}
		if got := tc.check(p); got != tc.done {
			t.Errorf("%s: done = %v, want %v", tc.name, got, tc.done)
		}
	}
}

func TestSettleWaitsUntilDoneOrDeadline(t *testing.T) {
	polls := 0
	doneOnThird := settleCheck{"third poll", func() bool { polls++; return polls >= 3 }}
	never := settleCheck{"never", func() bool { return false }}
	always := settleCheck{"always", func() bool { return true }}

	if waited, pending := settle([]settleCheck{always, doneOnThird}, time.Minute, time.Millisecond); pending != "" || polls != 3 || waited >= time.Minute {
		t.Errorf("settle returned after %v with %q pending and %d polls, want nothing pending after the third poll", waited, pending, polls)
	}
	waited, pending := settle([]settleCheck{never, always, never}, 20*time.Millisecond, time.Millisecond)
	if pending != "never, never" {
		t.Errorf("pending at the deadline: %q, want the two checks that never finish", pending)
	}
	if waited < 20*time.Millisecond {
		t.Errorf("settle gave up after %v, before its deadline", waited)
	}
}
