//go:build linux && cgo && seccomp

package agent

import (
	libseccomp "github.com/seccomp/libseccomp-golang"

	"github.com/runv-project/runv/api/convert"
)

func init() {
	// The numbering libcontainer's -ENOSYS stub uses: libseccomp's, for the native arch.
	convert.SyscallNumber = func(name string) (int, bool) {
		nr, err := libseccomp.GetSyscallFromName(name)
		if err != nil {
			return 0, false
		}
		return int(nr), true
	}
}
