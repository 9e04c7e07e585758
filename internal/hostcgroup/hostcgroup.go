// Package hostcgroup reads which of the host's cgroup hierarchies a process is in and where
// they are mounted: the shim joins its pod's cgroup in each of them, and benchtool's cgmove
// times that move.
package hostcgroup

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// Root is where the host's cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// Membership is one hierarchy of /proc/self/cgroup: where it is mounted, and this process's
// cgroup in it (relative to the hierarchy's root).
type Membership struct {
	Mount string
	Path  string
}

// Self lists the hierarchies this process is in whose mount point is known: the unified one
// and systemd's under their usual names, v1 controllers whose directory exists. Named
// hierarchies other than systemd's are left out. A read cut short returns what was read
// before it with the error.
func Self() ([]Membership, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Membership
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id:controllers:path; controllers is empty for cgroup v2.
		fields := strings.SplitN(sc.Text(), ":", 3)
		if len(fields) != 3 {
			continue
		}
		if m := mountOf(fields[1]); m != "" {
			out = append(out, Membership{Mount: m, Path: fields[2]})
		}
	}
	return out, sc.Err()
}

// mountOf is the mount point of a hierarchy named by /proc/self/cgroup's controller field
// ("" for none: a named hierarchy other than systemd's, a controller not mounted).
func mountOf(controllers string) string {
	switch {
	case controllers == "":
		if _, err := os.Stat(filepath.Join(Root, "cgroup.controllers")); err == nil {
			return Root // unified only
		}
		return filepath.Join(Root, "unified")
	case controllers == "name=systemd":
		return filepath.Join(Root, "systemd")
	case strings.HasPrefix(controllers, "name="):
		return ""
	}
	m := filepath.Join(Root, controllers)
	if _, err := os.Stat(m); err != nil {
		return ""
	}
	return m
}
