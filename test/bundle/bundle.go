// Package bundle builds OCI bundles for tests, the demo and the benchmarks: a busybox root
// filesystem made from Debian's busybox-static and a config.json from runv's default spec.
package bundle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/oci"
)

// Busybox is where Debian's busybox-static installs its binary.
const Busybox = "/bin/busybox"

// MakeRootfs creates a minimal busybox root filesystem in dir: the binary, one symlink per
// applet at the path busybox reports, the directories a container expects, and /etc files.
func MakeRootfs(dir string) error {
	out, err := exec.Command("file", "-L", Busybox).Output()
	if err != nil || !bytes.Contains(out, []byte("statically linked")) {
		return fmt.Errorf("need a static busybox at %s: apt-get install busybox-static", Busybox)
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys", "dev", "var/tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		os.Chmod(filepath.Join(dir, d), 0o777|os.ModeSticky) // 0o1777 would lose the sticky bit: os.FileMode has its own flag
	}
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(Busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	for _, p := range strings.Fields(string(list)) {
		if p == "bin/busybox" {
			continue
		}
		target := filepath.Join(dir, p)
		if _, err := os.Lstat(target); err == nil {
			continue
		}
		if err := os.Symlink("/bin/busybox", target); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname":    "runv\n",
		"etc/resolv.conf": "",
		"etc/hosts":       "127.0.0.1 localhost\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Make creates a bundle in dir whose process runs args without a terminal. The rootfs is
// built once and reused when dir/rootfs already holds busybox.
func Make(dir string, args ...string) (*specs.Spec, error) {
	rootfs := filepath.Join(dir, "rootfs")
	if _, err := os.Stat(filepath.Join(rootfs, "bin/busybox")); err != nil {
		if err := MakeRootfs(rootfs); err != nil {
			return nil, err
		}
	}
	s := oci.DefaultSpec()
	s.Process.Terminal = false
	if len(args) > 0 {
		s.Process.Args = args
	}
	return s, WriteSpec(dir, s)
}

// WriteSpec writes s as dir/config.json.
func WriteSpec(dir string, s *specs.Spec) error {
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
}
