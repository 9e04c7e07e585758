// Package leakcheck holds test helpers that fail a test for what it left running.
package leakcheck

import (
	"runtime"
	"testing"
	"time"
)

// Goroutines fails the test if goroutines started during it are still running once it
// ended (polled with a deadline: exiting goroutines need a moment to be reaped).
func Goroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
