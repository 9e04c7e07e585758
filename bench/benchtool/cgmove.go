package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/runv-project/runv/internal/hostcgroup"
)

// cgmove is the floor of putting a process into a pod's cgroup on the host: it moves an
// idle child process into a new cgroup in every hierarchy this process is in, as the shim
// moves itself and its VM, and times each write to cgroup.procs. The first write waits for
// an RCU grace period (the kernel's cgroup_threadgroup_rwsem takes its slow path); writes
// that follow while it is still there cost little.
func cgmove(args []string) error {
	fs := flag.NewFlagSet("cgmove", flag.ExitOnError)
	n := fs.Int("n", 5, "rounds")
	fs.Parse(args)
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	name := fmt.Sprintf("benchtool-cgmove-%d", os.Getpid())
	var first, rest []time.Duration
	for round := 0; round < *n; round++ {
		child := exec.Command("sleep", "60")
		if err := child.Start(); err != nil {
			return err
		}
		var dirs []string
		err := func() error {
			for i, m := range mounts {
				dir := filepath.Join(m, name)
				if err := os.Mkdir(dir, 0o755); err != nil {
					return err
				}
				dirs = append(dirs, dir)
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					if b, err := os.ReadFile(filepath.Join(m, f)); err == nil {
						os.WriteFile(filepath.Join(dir, f), b, 0o644)
					}
				}
				start := time.Now()
				if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(child.Process.Pid)), 0o644); err != nil {
					return err
				}
				if i == 0 {
					first = append(first, time.Since(start))
				} else {
					rest = append(rest, time.Since(start))
				}
			}
			return nil
		}()
		child.Process.Kill()
		child.Wait()
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
		if err != nil {
			return fmt.Errorf("cgmove: %w", err)
		}
		// The next round starts from the fast path again: well past a grace period.
		time.Sleep(200 * time.Millisecond)
	}
	stats("cgroup move: first hierarchy", first)
	stats(fmt.Sprintf("cgroup move: each of %d more", len(mounts)-1), rest)
	return nil
}

// cgroupMounts are the mount points of the hierarchies this process is in.
func cgroupMounts() ([]string, error) {
	hierarchies, err := hostcgroup.Self()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range hierarchies {
		if _, err := os.Stat(h.Mount); err == nil {
			out = append(out, h.Mount)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("cgmove: no cgroup hierarchy mounted under " + hostcgroup.Root)
	}
	return out, nil
}
