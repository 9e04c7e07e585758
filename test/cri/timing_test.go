//go:build integration

package cri

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIStartTiming is make bench's CRI figure: RunPodSandbox + CreateContainer +
// StartContainer of a busybox container, per handler (runc; runv; runv with its VMs from a
// pool that is full when each run starts), the median of N runs after one warm-up, in one
// run of the suite. It is a measurement, run when RUNV_CRI_BENCH=1 (N: RUNV_CRI_BENCH_N,
// default 10); every call must succeed.
func TestCRIStartTiming(t *testing.T) {
	if os.Getenv("RUNV_CRI_BENCH") != "1" {
		t.Skip("a measurement for make bench: set RUNV_CRI_BENCH=1")
	}
	n := 10
	if v, err := strconv.Atoi(os.Getenv("RUNV_CRI_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	stopPool := startPool(t)
	defer stopPool()
	medians := map[string]time.Duration{}
	for _, h := range []string{"runc", "runv", "runv-pool"} {
		var runs []time.Duration
		for i := 0; i <= n; i++ {
			if h == "runv-pool" {
				waitPoolFull(t)
			}
			d := timeStart(t, h, i)
			if i > 0 { // the first run warms caches up
				runs = append(runs, d)
			}
		}
		sort.Slice(runs, func(a, b int) bool { return runs[a] < runs[b] })
		medians[h] = runs[len(runs)/2]
		fmt.Printf("cri start %-10s median %7.1f ms  min %7.1f ms  max %7.1f ms  (n=%d)\n", h,
			ms(medians[h]), ms(runs[0]), ms(runs[len(runs)-1]), len(runs))
	}
	for _, h := range []string{"runv", "runv-pool"} {
		fmt.Printf("cri start %-10s median = %.1f x runc\n", h, float64(medians[h])/float64(medians["runc"]))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// timeStart times one pod with one started container, then removes the pod (untimed).
func timeStart(t *testing.T, handler string, i int) time.Duration {
	t.Helper()
	name := fmt.Sprintf("timing-%s-%d", handler, i)
	cfg := &rt.PodSandboxConfig{
		Metadata:     &rt.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name},
		Hostname:     "timing",
		LogDirectory: filepath.Join(work, "logs", name),
		Linux:        &rt.LinuxPodSandboxConfig{CgroupParent: cgroupRoot + "/" + name},
	}
	c := ctx(t)
	start := time.Now()
	sb, err := runtimeSvc.RunPodSandbox(c, &rt.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox (%s): %v%s", handler, err, logTail())
	}
	p := &pod{t: t, handler: handler, id: sb.PodSandboxId, cfg: cfg}
	defer p.remove()
	ctr, err := runtimeSvc.CreateContainer(c, &rt.CreateContainerRequest{PodSandboxId: p.id, SandboxConfig: cfg, Config: &rt.ContainerConfig{
		Metadata: &rt.ContainerMetadata{Name: "main"}, Image: &rt.ImageSpec{Image: busybox}, Command: []string{"sleep", "1000"},
	}})
	if err != nil {
		t.Fatalf("CreateContainer (%s): %v", handler, err)
	}
	if _, err := runtimeSvc.StartContainer(c, &rt.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer (%s): %v", handler, err)
	}
	return time.Since(start)
}

// startPool starts the factory daemon of the shim's root with the runv-pool handler's
// policy, and waits until its pool is full; the returned function stops it.
func startPool(t *testing.T) func() {
	t.Helper()
	cmd := exec.Command(runvBinary, "--root", shimRoot, "--factory", filepath.Join(work, "pool.json"), "manage", "factory-daemon")
	log, err := os.Create(filepath.Join(work, "factory.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the factory daemon: %v", err)
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
		b, _ := os.ReadFile(filepath.Join(work, "factory.log"))
		t.Fatalf("the factory daemon did not serve within 30s: %s", b)
	}
	waitPoolFull(t)
	return stop
}

// waitPoolFull waits until the factory daemon's pool is full again.
func waitPoolFull(t *testing.T) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(c, runvBinary, "--root", shimRoot, "manage", "factory-daemon", "--status", "--wait", "--timeout", "5m").CombinedOutput(); err != nil {
		t.Fatalf("the pool did not fill: %v: %s", err, out)
	}
}
