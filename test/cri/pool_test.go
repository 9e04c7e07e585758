//go:build integration

package cri

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pooled tells the handlers whose pods take their VMs from the factory daemon's pool
// (runv-pool, and runv-pool-base: another build of the shim).
func pooled(handler string) bool { return strings.HasPrefix(handler, "runv-pool") }

// runvShim tells the handlers served by runv's own shim.
func runvShim(handler string) bool { return handler == "runv" || pooled(handler) }

// stopPool stops the pool TestMain started for the suite's runv-pool cases (nil: none).
var stopPool func()

// startPool starts the factory daemon of the shim's root with the runv-pool handler's
// policy, and waits until its pool is full; the returned function stops it.
func startPool() (func(), error) {
	cmd := exec.Command(runvBinary, "--root", shimRoot, "--factory", filepath.Join(work, "pool.json"), "manage", "factory-daemon")
	logPath := filepath.Join(work, "factory.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the factory daemon: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	if !waitFor(30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(shimRoot, "@factory", "factory.sock"))
		return err == nil
	}) {
		stop()
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("the factory daemon did not serve within 30s: %s", b)
	}
	if err := poolFull(); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// poolFull waits until the factory daemon's pool is full again.
func poolFull() error {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(c, runvBinary, "--root", shimRoot, "manage", "factory-daemon", "--status", "--wait", "--timeout", "5m").CombinedOutput(); err != nil {
		return fmt.Errorf("the pool did not fill: %v: %s", err, out)
	}
	return nil
}

// waitPoolFull is poolFull for a test.
func waitPoolFull(t *testing.T) {
	t.Helper()
	if err := poolFull(); err != nil {
		t.Fatal(err)
	}
}
