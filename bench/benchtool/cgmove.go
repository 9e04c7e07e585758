package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
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
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), ":", 3)
		if len(fields) != 3 {
			continue
		}
		var m string
		switch c := fields[1]; {
		case c == "":
			m = "/sys/fs/cgroup/unified"
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
				m = "/sys/fs/cgroup"
			}
		case c == "name=systemd":
			m = "/sys/fs/cgroup/systemd"
		case strings.HasPrefix(c, "name="):
			continue
		default:
			m = filepath.Join("/sys/fs/cgroup", c)
		}
		if _, err := os.Stat(m); err == nil {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("cgmove: no cgroup hierarchy mounted under /sys/fs/cgroup")
	}
	return out, sc.Err()
}
