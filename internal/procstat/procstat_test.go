package procstat

import (
	"os"
	"testing"
	"time"
)

// CPUTime counts what a process used: this one's grows while it spins, and a process that
// does not exist is an error.
func TestCPUTime(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		now, err := CPUTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now > before {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("CPU time still %v after spinning for 10 s", now)
		}
	}
	if _, err := CPUTime(1 << 30); err == nil {
		t.Error("CPUTime of a pid that cannot exist: no error")
	}
}
