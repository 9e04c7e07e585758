package hypervisor

import "os"

// Where the QEMU binary comes from when Config.QEMU is empty.
const (
	// InstalledQEMU is runv's own QEMU build (qemu-build/build.sh), which `make install`
	// puts in libexec (under /usr: QEMU's jail mounts host files from /usr read-only, and
	// nothing from /var): Debian's QEMU 7.2 source with runv's devices only, optimised with
	// a profile of our guest's boots (docs/performance.md, "QEMU built for runv, stop 20").
	InstalledQEMU = "/usr/local/libexec/runv/qemu-system-x86_64"
	// PathQEMU is the fallback, looked up on PATH: Debian's qemu-system-x86_64.
	PathQEMU = "qemu-system-x86_64"
	// EnvQEMU names another binary (runv's --qemu sets it for the processes it starts).
	EnvQEMU = "RUNV_QEMU"
)

// DefaultQEMU is the QEMU a VM runs when its Config names none: $RUNV_QEMU if set, else
// InstalledQEMU if it is installed, else qemu-system-x86_64 on PATH.
func DefaultQEMU() string { return defaultQEMU(os.Getenv(EnvQEMU), InstalledQEMU) }

func defaultQEMU(env, installed string) string {
	if env != "" {
		return env
	}
	if st, err := os.Stat(installed); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
		return installed
	}
	return PathQEMU
}
