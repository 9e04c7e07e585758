// Package poll waits for a condition of another process's state (a container's status, a
// daemon's files), for which tests have no event to wait on: polled with a deadline.
package poll

import "time"

// Until calls cond every interval until it holds or timeout has passed, and reports
// whether it held.
func Until(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}
