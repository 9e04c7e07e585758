//go:build integration

package cri

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIStartTiming is make bench's CRI figure: RunPodSandbox + CreateContainer +
// StartContainer of a busybox container, per handler (runc; runv; runv with its VMs from a
// pool that is full when each run starts), the median of N runs after one warm-up, in one
// run of the suite. It is a measurement, run when RUNV_CRI_BENCH=1 (N: RUNV_CRI_BENCH_N,
// default 10; the handlers: RUNV_CRI_BENCH_HANDLERS, a comma list, default
// runc,runv,runv-pool; runv-pool-base is runv-pool with the shim at
// RUNV_CRI_BENCH_BASELINE_SHIM, for a before/after in one run); every call must succeed.
// The handlers take turns, run by run, so that a change in the machine's load falls on all
// of them alike.
func TestCRIStartTiming(t *testing.T) {
	if os.Getenv("RUNV_CRI_BENCH") != "1" {
		t.Skip("a measurement for make bench: set RUNV_CRI_BENCH=1")
	}
	n := 10
	if v, err := strconv.Atoi(os.Getenv("RUNV_CRI_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	handlers := []string{"runc", "runv", "runv-pool"}
	if v := os.Getenv("RUNV_CRI_BENCH_HANDLERS"); v != "" {
		handlers = strings.Split(v, ",")
	}
	if slices.ContainsFunc(handlers, pooled) && stopPool == nil {
		var err error
		if stopPool, err = startPool(); err != nil {
			t.Fatal(err)
		}
		defer func() { stopPool(); stopPool = nil }()
	}
	runs := map[string][]startTimes{}
	for i := 0; i <= n; i++ {
		for _, h := range handlers {
			if pooled(h) {
				waitPoolFull(t)
			}
			d := timeStart(t, h, i)
			if i > 0 { // the first run warms caches up
				runs[h] = append(runs[h], d)
			}
		}
	}
	medians := map[string]time.Duration{}
	for _, h := range handlers {
		r := runs[h]
		total := median(r, func(s startTimes) time.Duration { return s.total() })
		medians[h] = total
		slices.SortFunc(r, func(a, b startTimes) int { return int(a.total() - b.total()) })
		fmt.Printf("cri start %-14s median %7.1f ms  min %7.1f ms  max %7.1f ms  (n=%d; medians: RunPodSandbox %.1f, CreateContainer %.1f, StartContainer %.1f ms)\n", h,
			ms(total), ms(r[0].total()), ms(r[len(r)-1].total()), len(r),
			ms(median(r, func(s startTimes) time.Duration { return s.sandbox })),
			ms(median(r, func(s startTimes) time.Duration { return s.create })),
			ms(median(r, func(s startTimes) time.Duration { return s.start })))
	}
	if _, ok := medians["runc"]; ok {
		for _, h := range handlers {
			if h != "runc" {
				fmt.Printf("cri start %-14s median = %.1f x runc\n", h, float64(medians[h])/float64(medians["runc"]))
			}
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// startTimes are the three calls of one timed pod start.
type startTimes struct{ sandbox, create, start time.Duration }

func (s startTimes) total() time.Duration { return s.sandbox + s.create + s.start }

// median is the median of one of the runs' figures.
func median(runs []startTimes, of func(startTimes) time.Duration) time.Duration {
	d := make([]time.Duration, len(runs))
	for i, r := range runs {
		d[i] = of(r)
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// timeStart times one pod with one started container, then removes the pod (untimed).
func timeStart(t *testing.T, handler string, i int) startTimes {
	t.Helper()
	name := fmt.Sprintf("timing-%s-%d", handler, i)
	cfg := &rt.PodSandboxConfig{
		Metadata:     &rt.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name},
		Hostname:     "timing",
		LogDirectory: filepath.Join(work, "logs", name),
		Linux:        &rt.LinuxPodSandboxConfig{CgroupParent: cgroupRoot + "/" + name},
	}
	c := ctx(t)
	var times startTimes
	start := time.Now()
	sb, err := runtimeSvc.RunPodSandbox(c, &rt.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox (%s): %v%s", handler, err, logTail())
	}
	times.sandbox = time.Since(start)
	p := &pod{t: t, handler: handler, id: sb.PodSandboxId, cfg: cfg}
	defer p.remove()
	start = time.Now()
	ctr, err := runtimeSvc.CreateContainer(c, &rt.CreateContainerRequest{PodSandboxId: p.id, SandboxConfig: cfg, Config: &rt.ContainerConfig{
		Metadata: &rt.ContainerMetadata{Name: "main"}, Image: &rt.ImageSpec{Image: busybox}, Command: []string{"sleep", "1000"},
	}})
	if err != nil {
		t.Fatalf("CreateContainer (%s): %v", handler, err)
	}
	times.create = time.Since(start)
	start = time.Now()
	if _, err := runtimeSvc.StartContainer(c, &rt.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer (%s): %v", handler, err)
	}
	times.start = time.Since(start)
	return times
}
