package hypervisor

import (
	"os"
	"path/filepath"
	"sync"
)

// Where the QEMU binary comes from when Config.QEMU is empty.
const (
	// InstalledQEMU is runv's own QEMU build (qemu-build/build.sh) where `make install` puts
	// it by default, in libexec (under /usr: QEMU's jail mounts host files from /usr
	// read-only, and nothing from /var): Debian's QEMU 7.2 source with runv's devices only,
	// optimised with a profile of our guest's boots (docs/performance.md, "QEMU built for
	// runv, stop 20").
	InstalledQEMU = "/usr/local/libexec/runv/qemu-system-x86_64"
	// PathQEMU is the fallback, looked up on PATH: Debian's qemu-system-x86_64.
	PathQEMU = "qemu-system-x86_64"
	// EnvQEMU names another binary (runv's --qemu sets it for the processes it starts).
	EnvQEMU = "RUNV_QEMU"
)

// qemuBesideProgram is where `make install PREFIX=P` puts runv's QEMU relative to the
// running program (P/bin/runv, P/libexec/runv/qemu-system-x86_64), so that an install
// under another prefix finds its own build instead of falling back to Debian's.
var qemuBesideProgram = sync.OnceValue(func() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Join(filepath.Dir(exe), "..", "libexec", "runv", "qemu-system-x86_64")
})

// DefaultQEMU is the QEMU a VM runs when its Config names none: $RUNV_QEMU if set, else
// runv's build installed with the running program, else InstalledQEMU, else
// qemu-system-x86_64 on PATH.
func DefaultQEMU() string {
	return defaultQEMU(os.Getenv(EnvQEMU), qemuBesideProgram(), InstalledQEMU)
}

// defaultQEMU returns env if set, else the first of installed that is an executable file,
// else PathQEMU.
func defaultQEMU(env string, installed ...string) string {
	if env != "" {
		return env
	}
	for _, path := range installed {
		if path == "" {
			continue
		}
		if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return path
		}
	}
	return PathQEMU
}
