// Package oci holds what runv knows about OCI bundles: the default config `runv spec` writes
// and the validation a config passes before anything is created for it.
package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/ocispec"
	"github.com/runv-project/runv/errdefs"
)

// LoadBundle reads and validates <bundle>/config.json, and resolves the paths it gives
// relative to the bundle (root.path, bind-mount sources). It is the one place they are
// resolved: the pod daemon and the agent take them as given. raw is the resolved config,
// encoded. Every error names the file and the field at fault, so the user knows what to fix.
func LoadBundle(bundle string) (abs string, spec *specs.Spec, raw []byte, err error) {
	abs, err = filepath.Abs(bundle)
	if err != nil {
		return "", nil, nil, fmt.Errorf("bundle %q: %w", bundle, err)
	}
	path := filepath.Join(abs, "config.json")
	raw, err = os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil, nil, fmt.Errorf("%s not found: pass the bundle directory with --bundle (create a config with 'runv spec'): %w", path, errdefs.ErrInvalidArgument)
		}
		return "", nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	spec = &specs.Spec{}
	if err := json.Unmarshal(raw, spec); err != nil {
		return "", nil, nil, fmt.Errorf("%s is not a valid OCI runtime config: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if err := Validate(abs, spec); err != nil {
		return "", nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	ResolvePaths(abs, spec)
	if raw, err = json.Marshal(spec); err != nil {
		return "", nil, nil, fmt.Errorf("%s: encode: %w", path, err)
	}
	return abs, spec, raw, nil
}

// ResolvePaths makes root.path and the bind-mount sources absolute, relative to bundle: the
// one rule for them, which every loader of a bundle applies (LoadBundle for the CLI, the
// containerd shim's for its tasks).
func ResolvePaths(bundle string, s *specs.Spec) {
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(bundle, p)
	}
	s.Root.Path = abs(s.Root.Path)
	for i, m := range s.Mounts {
		if ocispec.IsBindMount(m) && m.Source != "" {
			s.Mounts[i].Source = abs(m.Source)
		}
	}
}

// Validate checks what runv needs of a config before it creates anything.
func Validate(bundle string, s *specs.Spec) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if !strings.HasPrefix(s.Version, "1.") {
		return invalid("ociVersion %q is not supported: runv implements OCI runtime spec 1.x", s.Version)
	}
	if s.Root == nil || s.Root.Path == "" {
		return invalid("root.path is missing: it names the container's root filesystem directory")
	}
	rootfs := s.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(bundle, rootfs)
	}
	fi, err := os.Stat(rootfs)
	if err != nil {
		return invalid("rootfs %s (root.path) does not exist", rootfs)
	}
	if !fi.IsDir() {
		return invalid("rootfs %s (root.path) is not a directory", rootfs)
	}
	if s.Process == nil {
		return invalid("process is missing")
	}
	if len(s.Process.Args) == 0 {
		return invalid("process.args is empty: name the program to run")
	}
	if s.Process.Cwd == "" || !filepath.IsAbs(s.Process.Cwd) {
		return invalid("process.cwd %q must be an absolute path", s.Process.Cwd)
	}
	for i, m := range s.Mounts {
		if m.Destination == "" || !filepath.IsAbs(m.Destination) {
			return invalid("mounts[%d].destination %q must be an absolute path", i, m.Destination)
		}
	}
	if s.Linux != nil {
		if err := checkNamespacePaths(s.Linux.Namespaces); err != nil {
			return invalid("%w", err)
		}
	}
	if h := s.Hooks; h != nil {
		for _, kind := range []struct {
			name  string
			hooks []specs.Hook
		}{
			{"prestart", h.Prestart}, //nolint:staticcheck // deprecated in the spec, still used
			{"createRuntime", h.CreateRuntime}, {"createContainer", h.CreateContainer},
			{"startContainer", h.StartContainer}, {"poststart", h.Poststart}, {"poststop", h.Poststop},
		} {
			for i, hook := range kind.hooks {
				if !filepath.IsAbs(hook.Path) {
					return invalid("hooks.%s[%d].path %q must be an absolute path", kind.name, i, hook.Path)
				}
				if hook.Timeout != nil && *hook.Timeout <= 0 {
					return invalid("hooks.%s[%d].timeout %d must be a positive number of seconds", kind.name, i, *hook.Timeout)
				}
			}
		}
	}
	return nil
}

// DefaultSpec is the config `runv spec` writes: an interactive shell in ./rootfs with the
// mounts, capabilities and masked paths runtimes conventionally apply.
func DefaultSpec() *specs.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			Terminal: true,
			User:     specs.User{UID: 0, GID: 0},
			Args:     []string{"sh"},
			Env:      []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
			Cwd:      "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Hostname: "runv",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}
