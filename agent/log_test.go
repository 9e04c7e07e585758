package agent

import (
	"fmt"
	"testing"
)

// The console lines' uptime is printed without fmt's float code; it must read exactly as
// "[%10.4f]" did (measurements in docs/performance.md parse those lines).
func TestAppendUptimeIsFmts(t *testing.T) {
	for _, ns := range []int64{
		0, 1, 49_999, 50_001, 99_999, 123_456_789, 999_949_999, 999_950_001,
		2_565_312_345, 59_999_999_999, 3_600_123_456_789, 99_999_999_940_000, 123_456_789_012_345_678,
	} {
		want := fmt.Sprintf("[%10.4f]", float64(ns)/1e9)
		if got := string(appendUptime(nil, ns)); got != want {
			t.Errorf("appendUptime(%d) = %q, want %q", ns, got, want)
		}
	}
	if got := string(appendUptime([]byte("x"), -5)); got != "x[    0.0000]" {
		t.Errorf("a negative uptime gives %q, want it clamped to zero after the prefix", got)
	}
}
