package convert

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// withSyscallNumbers makes SyscallNumber resolve a few amd64 syscalls for the test.
func withSyscallNumbers(t *testing.T) {
	t.Helper()
	nrs := map[string]int{"read": 0, "write": 1, "pkey_free": 331, "statx": 332, "clone3": 435}
	old := SyscallNumber
	SyscallNumber = func(n string) (int, bool) { nr, ok := nrs[n]; return nr, ok }
	t.Cleanup(func() { SyscallNumber = old })
}

func statxRules(s *specs.LinuxSeccomp) []specs.LinuxSyscall {
	var out []specs.LinuxSyscall
	for _, sc := range s.Syscalls {
		for _, n := range sc.Names {
			if n == "statx" {
				out = append(out, sc)
			}
		}
	}
	return out
}

func TestAllowStatxMountID(t *testing.T) {
	withSyscallNumbers(t)
	enosys := uint(unix.ENOSYS)
	old := func() *specs.LinuxSeccomp { // a profile from before statx: runtime-tools' default
		return &specs.LinuxSeccomp{
			DefaultAction: specs.ActErrno,
			Architectures: []specs.Arch{specs.ArchX86_64},
			Syscalls:      []specs.LinuxSyscall{{Names: []string{"read", "write", "pkey_free"}, Action: specs.ActAllow}},
		}
	}

	t.Run("old profile: mount-id statx allowed, the rest keeps ENOSYS", func(t *testing.T) {
		s := old()
		allowStatxMountID(s)
		rules := statxRules(s)
		if len(rules) != 2 {
			t.Fatalf("statx rules: %+v", rules)
		}
		allow, deny := rules[0], rules[1]
		wantArg := specs.LinuxSeccompArg{Index: 3, Value: unix.STATX_MNT_ID, ValueTwo: unix.STATX_MNT_ID, Op: specs.OpMaskedEqual}
		if allow.Action != specs.ActAllow || len(allow.Args) != 1 || allow.Args[0] != wantArg {
			t.Errorf("allow rule %+v", allow)
		}
		if deny.Action != specs.ActErrno || deny.ErrnoRet == nil || *deny.ErrnoRet != enosys ||
			len(deny.Args) != 1 || deny.Args[0].ValueTwo != 0 || deny.Args[0].Value != unix.STATX_MNT_ID {
			t.Errorf("ENOSYS rule %+v", deny)
		}
	})

	t.Run("profile naming a newer syscall: the rest gets the default action", func(t *testing.T) {
		s := old()
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActAllow})
		allowStatxMountID(s)
		if rules := statxRules(s); len(rules) != 1 || rules[0].Action != specs.ActAllow {
			t.Errorf("statx rules: %+v", rules)
		}
	})

	t.Run("default errno is ENOSYS already", func(t *testing.T) {
		s := old()
		s.DefaultErrnoRet = &enosys
		allowStatxMountID(s)
		if rules := statxRules(s); len(rules) != 1 || rules[0].Action != specs.ActAllow {
			t.Errorf("statx rules: %+v", rules)
		}
	})

	t.Run("left alone", func(t *testing.T) {
		named := old()
		named.Syscalls = append(named.Syscalls, specs.LinuxSyscall{Names: []string{"statx"}, Action: specs.ActErrno})
		allowDefault := old()
		allowDefault.DefaultAction = specs.ActAllow
		allowDefault.Syscalls = []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActErrno}}
		for name, s := range map[string]*specs.LinuxSeccomp{"statx named": named, "allow by default": allowDefault} {
			n := len(s.Syscalls)
			allowStatxMountID(s)
			if len(s.Syscalls) != n {
				t.Errorf("%s: rules added: %+v", name, s.Syscalls[n:])
			}
		}
		allowStatxMountID(nil)
	})

	t.Run("AdjustSpec applies it", func(t *testing.T) {
		in := baseSpec()
		in.Linux.Seccomp = old()
		out, err := AdjustSpec(in, guest("c"))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(statxRules(out.Linux.Seccomp)); n != 2 {
			t.Errorf("%d statx rules, want 2", n)
		}
	})
}
