// Package mounts finds and releases the host mounts under a directory: the pod's share
// (bundle rootfs and volume binds, and the share itself where hypervisor/qemu binds it on
// itself) and a pooled VM's directory, whoever made them and whether or not they lived.
package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// RemoveUnmounted removes dir recursively, but only when nothing is mounted at or below it:
// a bind-mounted rootfs that failed to unmount must never be deleted through the share.
func RemoveUnmounted(dir string) error {
	mounts, err := Under(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("refusing to remove %s: %s is still mounted", dir, mounts[0])
	}
	return os.RemoveAll(dir)
}

// UnmountUnder detaches every mount at or below dir, deepest first. It is also how `runv
// delete` cleans up after a daemon that was killed.
func UnmountUnder(dir string) error {
	mounts, err := Under(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// Under lists the mount points at or below dir, deepest first.
func Under(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	table, err := Table()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range table {
		if m.MountPoint == dir || strings.HasPrefix(m.MountPoint, dir+"/") {
			out = append(out, m.MountPoint)
		}
	}
	// Deepest first, so parents are not busy.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// Info is a line of /proc/self/mountinfo, the fields runv reads:
//
//	id parent major:minor root mountpoint options [optional fields...] - fstype source superoptions
type Info struct {
	ID         string
	MountPoint string   // unescaped
	Optional   []string // propagation: "shared:N", "master:N", "unbindable"
	FSType     string
	Source     string
}

// Table reads this process's mount table. Lines it cannot read are left out.
func Table() ([]Info, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Info
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 6 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, Info{ID: fields[0], MountPoint: Unescape(fields[4]), Optional: fields[6:sep],
			FSType: fields[sep+1], Source: fields[sep+2]})
	}
	return out, sc.Err()
}

// Unescape undoes the octal escapes (\040 for space, ...) of /proc/self/mountinfo.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
