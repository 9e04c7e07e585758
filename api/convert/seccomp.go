package convert

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// statxMountIDMasks are the statx(2) mask bits that ask for a mount id: what libcontainer's
// procfs checks (filepath-securejoin's pathrs-lite GetMountID) request.
const (
	statxMntID       = unix.STATX_MNT_ID // 0x1000
	statxMntIDUnique = 0x4000            // STATX_MNT_ID_UNIQUE
)

// SyscallNumber resolves a syscall name for the guest's native architecture the way
// libcontainer's seccomp code does (libseccomp); nil when the agent is built without
// seccomp support, and then the -ENOSYS stub is assumed to cover statx.
var SyscallNumber func(name string) (int, bool)

// allowStatxMountID keeps libcontainer's own statx(STATX_MNT_ID) calls working under a
// seccomp profile that does not mention statx.
//
// Without noNewPrivileges libcontainer loads the filter before it closes the descriptors the
// process must not inherit, and finding those goes through its procfs handle, which checks
// for overmounts with statx(..., STATX_MNT_ID). A profile written before statx existed
// (runtime-tools' default, old docker profiles) denies it — libcontainer's -ENOSYS stub
// answers ENOSYS for syscalls newer than any the profile names — and the container's init
// fails with "error closing exec fds: ... could not get mount id: function not implemented"
// (runc 1.4 and later do the same: runc#5059; Debian's runc 1.1 has no such check).
//
// The profile is extended by exactly that: statx calls whose mask asks for a mount id are
// allowed (they return the same metadata stat(2) does, plus the mount id), and every other
// statx gets what it got before — -ENOSYS when the stub covered statx, else the profile's
// default action, which is what a statx rule's absence gives. A profile that names statx, or
// allows by default, is left alone.
func allowStatxMountID(s *specs.LinuxSeccomp) {
	if s == nil || isAllowAction(s.DefaultAction) {
		return
	}
	for _, sc := range s.Syscalls {
		for _, n := range sc.Names {
			if n == "statx" {
				return
			}
		}
	}
	enosys := statxGetsENOSYS(s)
	s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{
		Names:  []string{"statx"},
		Action: specs.ActAllow,
		Args:   []specs.LinuxSeccompArg{{Index: 3, Value: statxMntID, ValueTwo: statxMntID, Op: specs.OpMaskedEqual}},
	})
	if enosys {
		errno := uint(unix.ENOSYS)
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{
			Names:    []string{"statx"},
			Action:   specs.ActErrno,
			ErrnoRet: &errno,
			Args:     []specs.LinuxSeccompArg{{Index: 3, Value: statxMntID, ValueTwo: 0, Op: specs.OpMaskedEqual}},
		})
	}
}

func isAllowAction(a specs.LinuxSeccompAction) bool {
	return a == specs.ActAllow || a == specs.ActLog || a == specs.ActTrace
}

// statxGetsENOSYS tells whether libcontainer's -ENOSYS stub (patchbpf) answers statx under
// this profile: the stub is there unless the default is an errno of ENOSYS already, and it
// covers the syscalls numbered above every syscall the profile names.
func statxGetsENOSYS(s *specs.LinuxSeccomp) bool {
	if s.DefaultErrnoRet != nil && *s.DefaultErrnoRet == uint(unix.ENOSYS) {
		return false // the default action already answers ENOSYS
	}
	if SyscallNumber == nil {
		return true
	}
	statx, ok := SyscallNumber("statx")
	if !ok {
		return true
	}
	for _, sc := range s.Syscalls {
		for _, n := range sc.Names {
			if nr, ok := SyscallNumber(n); ok && nr > statx {
				return false
			}
		}
	}
	return true
}
