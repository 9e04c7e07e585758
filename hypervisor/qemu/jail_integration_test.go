//go:build integration

package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/runv-project/runv/hypervisor"
)

// BenchmarkJail is what QEMU's jail adds to every launch: planning it (the host files are
// found once per process, before the timer), making the share propagate, and building the
// namespace in a thread (unshare, clones, tmpfs, moves, pivot_root) that then exits, which
// ends the namespace.
func BenchmarkJail(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("building a jail needs root (CAP_SYS_ADMIN)")
	}
	qemu, err := exec.LookPath(hypervisor.DefaultQEMU())
	if err != nil {
		b.Skip("no " + hypervisor.DefaultQEMU() + " found")
	}
	sys, err := qemuHostFiles(qemu, filepath.Join(b.TempDir(), "files.json"))
	if err != nil {
		b.Fatal(err)
	}
	base := b.TempDir()
	cfg := hypervisor.Config{Dir: filepath.Join(base, "vm"), ShareDir: filepath.Join(base, "share"),
		Kernel: filepath.Join(base, "vmlinux"), Initrd: filepath.Join(base, "initrd")}
	for _, d := range []string{cfg.Dir, cfg.ShareDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	for _, f := range []string{cfg.Kernel, cfg.Initrd} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	var mounts int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j, err := vmJail(cfg, hypervisor.AccelTCG, "", false, false, sys)
		if err != nil {
			b.Fatal(err)
		}
		mounts = len(j.mounts)
		release, err := propagateShare(j.share)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error)
		offMainThread(func() { done <- j.enter(cfg.Dir) })
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		release()
	}
	b.ReportMetric(float64(mounts), "mounts")
}

// BenchmarkDiscoverHostFiles is the one-time cost per process of finding what QEMU needs
// (the loader's list of libraries, QEMU's firmware path), paid by its first launch.
func BenchmarkDiscoverHostFiles(b *testing.B) {
	qemu, err := exec.LookPath(hypervisor.DefaultQEMU())
	if err != nil {
		b.Skip("no " + hypervisor.DefaultQEMU() + " found")
	}
	for i := 0; i < b.N; i++ {
		if _, err := discoverHostFiles(qemu); err != nil {
			b.Fatal(err)
		}
	}
}
