package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// crilog breaks CRI pod starts down into phases, from a containerd log at debug level
// (TestCRIStartTiming with RUNV_CRI_KEEP_LOG): containerd's own lines and, for runv's shim,
// the shim's debug lines it carries. Each pod is one RunPodSandbox + CreateContainer +
// StartContainer of the timing test, named PREFIX<n>; pod 0 is the warm-up and is skipped.
// It prints the median of each phase over the pods.
func crilog(args []string) error {
	fs := flag.NewFlagSet("crilog", flag.ExitOnError)
	logPath := fs.String("log", "", "containerd's log")
	prefix := fs.String("pods", "", "the timed pods' name prefix (timing-runv-pool-)")
	fs.Parse(args)
	if *logPath == "" || *prefix == "" {
		return fmt.Errorf("crilog: -log and -pods are required")
	}
	f, err := os.Open(*logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	pods, err := criPods(bufio.NewScanner(f), *prefix)
	if err != nil {
		return err
	}
	if len(pods) == 0 {
		return fmt.Errorf("crilog: no pod named %s<n> (n > 0) in %s", *prefix, *logPath)
	}
	phases := map[string][]time.Duration{}
	var order []string
	add := func(name string, d time.Duration, ok bool) {
		if !ok {
			return
		}
		if _, seen := phases[name]; !seen {
			order = append(order, name)
		}
		phases[name] = append(phases[name], d)
	}
	for _, p := range pods {
		p.phases(add)
	}
	for _, name := range order {
		stats(name, phases[name])
	}
	return nil
}

// criPod is the log of one timed pod start: timestamps of containerd's lines by what they
// say, and the durations the shim logged.
type criPod struct {
	lines []criLine
}

type criLine struct {
	at  time.Time
	msg string
}

var (
	criTime = regexp.MustCompile(`^time="?([0-9T:.\-]+)Z"?`)
	criPodN = regexp.MustCompile(`RunPodSandbox for &PodSandboxMetadata\{Name:([^,]+),`)
)

// criPods splits the log into the pods named prefix<n>, n > 0.
func criPods(sc *bufio.Scanner, prefix string) ([]*criPod, error) {
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var pods []*criPod
	var cur *criPod
	for sc.Scan() {
		l := sc.Text()
		m := criTime.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		at, err := time.Parse("2006-01-02T15:04:05.999999999", m[1])
		if err != nil {
			continue
		}
		if n := criPodN.FindStringSubmatch(l); n != nil && !strings.Contains(l, " returns ") {
			cur = nil
			if num, ok := strings.CutPrefix(n[1], prefix); ok {
				if i, err := strconv.Atoi(num); err == nil && i > 0 {
					cur = &criPod{}
					pods = append(pods, cur)
				}
			}
		}
		if cur == nil {
			continue
		}
		if strings.Contains(l, "StopPodSandbox for") {
			cur = nil
			continue
		}
		cur.lines = append(cur.lines, criLine{at: at, msg: l})
	}
	return pods, sc.Err()
}

// first is the time of the first line containing s at or after from.
func (p *criPod) first(s string, from time.Time) (time.Time, bool) {
	for _, l := range p.lines {
		if !l.at.Before(from) && strings.Contains(l.msg, s) {
			return l.at, true
		}
	}
	return time.Time{}, false
}

// logged is a duration the shim logged in the nth line (from 0) containing s (key=value,
// Go's format).
func (p *criPod) logged(s, key string, nth int) (time.Duration, bool) {
	for _, l := range p.lines {
		if !strings.Contains(l.msg, s) {
			continue
		}
		if nth--; nth >= 0 {
			continue
		}
		for _, f := range strings.Fields(l.msg) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				d, err := time.ParseDuration(v)
				return d, err == nil
			}
		}
	}
	return 0, false
}

func (p *criPod) phases(add func(string, time.Duration, bool)) {
	between := func(name, from, to string, after time.Time) time.Time {
		a, ok := p.first(from, after)
		b, ok2 := p.first(to, a)
		add(name, b.Sub(a), ok && ok2)
		return b
	}
	var zero time.Time
	between("RunPodSandbox: containerd before CNI", "RunPodSandbox for", "begin cni setup", zero)
	between("RunPodSandbox: CNI", "begin cni setup", "cni result", zero)
	between("RunPodSandbox: shim start (serving)", "cni result", "starting signal loop", zero)
	between("RunPodSandbox: Create until TaskCreate", "starting signal loop", "topic=/tasks/create", zero)
	shimLines := []struct {
		name, line, key string
		nth             int
	}{
		{"  pod started (shim)", `msg="pod started"`, "duration", 0},
		{"  VM from the pool", "boot: got VM", "duration", 0},
		{"  agent connected", "boot: agent connected", "duration", 0},
		{"  STARTPOD", "boot: pod started in guest", "duration", 0},
		{"  VM into the pod's cgroup", "boot: VM placed", "duration", 0},
		{"  sandbox container created in the guest", "container created in the guest", "duration", 0},
		{"  network: host side", "network: mirrored", "attach", 0},
		{"  network: guest side", "network: mirrored", "guest", 0},
		{"  network in all", "network connected", "duration", 0},
	}
	for _, d := range shimLines {
		v, ok := p.logged(d.line, d.key, d.nth)
		add(d.name, v, ok)
	}
	created := between("RunPodSandbox: TaskCreate to TaskStart", "topic=/tasks/create", "topic=/tasks/start", zero)
	between("RunPodSandbox: TaskStart to its return", "topic=/tasks/start", "RunPodSandbox for", created)
	between("CreateContainer", "CreateContainer within sandbox", "returns container id", zero)
	started, ok := p.first("StartContainer for", zero)
	if ok {
		between("StartContainer: until TaskCreate", "StartContainer for", "topic=/tasks/create", started)
		v, ok := p.logged("container created in the guest", "duration", 1)
		add("  container created in the guest", v, ok)
		tc := between("StartContainer: TaskCreate to TaskStart", "topic=/tasks/create", "topic=/tasks/start", started)
		between("StartContainer: TaskStart to its return", "topic=/tasks/start", "returns successfully", tc)
	}
	t0, ok := p.first("RunPodSandbox for", zero)
	t1, ok2 := p.first("StartContainer for", t0)
	t2, ok3 := p.first("returns successfully", t1)
	add("total", t2.Sub(t0), ok && ok2 && ok3)
}
