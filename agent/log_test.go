package agent

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
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

// libcontainer's logrus lines reach the agent's console with its prefix (warnings and
// errors; debug lines only with runv.debug=1), and nothing of logrus' own output.
func TestLogrusLinesGoToTheAgentsLog(t *testing.T) {
	std := logrus.StandardLogger()
	out, formatter, hooks, level := std.Out, std.Formatter, std.Hooks, std.Level
	defer func() { std.Out, std.Formatter, std.Hooks, std.Level = out, formatter, hooks, level }()
	for _, debug := range []bool{false, true} {
		var b bytes.Buffer
		setupLogrus(newLogger(&b, debug), debug, &tracer{})
		logrus.WithField("k", "v").Warn("a warning")
		logrus.Debug("a debug line")
		lines := b.String()
		if !strings.Contains(lines, " runv-agent lib=libcontainer: warning: a warning k=v\n") {
			t.Errorf("debug=%v: the warning is not in the agent's log: %q", debug, lines)
		}
		if got := strings.Contains(lines, "a debug line"); got != debug {
			t.Errorf("debug=%v: the debug line logged: %v (%q)", debug, got, lines)
		}
		if wantLevel := map[bool]logrus.Level{false: logrus.WarnLevel, true: logrus.DebugLevel}[debug]; logrus.GetLevel() != wantLevel {
			t.Errorf("debug=%v: logrus' level %v, want %v (runc init reads it)", debug, logrus.GetLevel(), wantLevel)
		}
	}
}
