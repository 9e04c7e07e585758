package agent

import (
	"regexp"
	"testing"
)

func TestBootStepsNamesEveryStepInOrder(t *testing.T) {
	b := newBootSteps()
	b.done("root")
	b.done("ports")
	if got, want := b.String(), `^main at \d+\.\d{4} s, then root \d+\.\dms, ports \d+\.\dms$`; !regexp.MustCompile(want).MatchString(got) {
		t.Fatalf("boot steps %q do not match %s", got, want)
	}
}
