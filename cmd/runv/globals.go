package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/poddaemon"
	"github.com/runv-project/runv/internal/state"
)

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "root", Value: "/run/runv", Usage: "root directory for storage of container state"},
		&cli.StringFlag{Name: "log", Usage: "log file (default: stderr)"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json"},
		&cli.BoolFlag{Name: "debug", Usage: "enable debug logging"},
		&cli.BoolFlag{Name: "systemd-cgroup", Usage: "the host cgroup of a container's shims is a systemd unit (cgroupsPath \"slice:prefix:name\"); resources are applied inside the VM"},
		// runc's other global flags, which clients such as containerd's go-runc may pass.
		&cli.StringFlag{Name: "rootless", Value: "auto", Usage: "accepted for runc compatibility; runv runs as root (it starts VMs and mounts)"},
		&cli.StringFlag{Name: "criu", Value: "criu", Usage: "accepted for runc compatibility; checkpoint/restore are not supported"},
		&cli.StringFlag{Name: "kernel", EnvVars: []string{"RUNV_KERNEL"}, Value: poddaemon.DefaultKernel, Usage: "guest kernel (uncompressed PVH vmlinux)"},
		&cli.StringFlag{Name: "initrd", EnvVars: []string{"RUNV_INITRD"}, Value: poddaemon.DefaultInitrd, Usage: "guest initrd holding the runv agent"},
		&cli.StringFlag{Name: "accel", EnvVars: []string{"RUNV_ACCEL"}, Value: hypervisor.AccelAuto, Usage: "accelerator: auto, kvm or tcg (auto probes KVM with a deadline and falls back to TCG)"},
		&cli.StringFlag{Name: "qemu", EnvVars: []string{hypervisor.EnvQEMU}, Usage: "QEMU binary (default: runv's own build, installed beside runv in ../libexec/runv/ or in " +
			hypervisor.InstalledQEMU + ", else " + hypervisor.PathQEMU + " on PATH)"},
		&cli.StringFlag{Name: "machine", EnvVars: []string{"RUNV_MACHINE"}, Value: hypervisor.MachineMicroVM, Usage: "QEMU machine type: microvm or q35"},
		&cli.IntFlag{Name: "default_cpus", Value: 1, Usage: "vCPUs of a pod VM"},
		&cli.IntFlag{Name: "default_memory", Value: 128, Usage: "memory of a pod VM in MiB"},
		&cli.StringFlag{Name: "factory", EnvVars: []string{envFactory}, Usage: "how pod VMs are made: direct, template, " +
			"a factory policy file, or an inline JSON policy such as '[{\"template\":true,\"cpu\":1,\"memory\":128}]' " +
			"(default: " + factory.DefaultPolicyFile + " if it exists, else direct)"},
	}
}

// envFactory is --factory's environment variable.
const envFactory = "RUNV_FACTORY"

// globals are the options every command shares.
type globals struct {
	root   string
	kernel string
	initrd string
	// qemu is --qemu: empty for hypervisor.DefaultQEMU.
	qemu      string
	accel     string
	machine   string
	cpus      int
	memoryMiB int
	debug     bool
	// systemdCgroup: containers' host cgroups are made through systemd (--systemd-cgroup).
	systemdCgroup bool
	logPath       string
	logFormat     string
	// factory is the --factory setting (factory.ParseSetting).
	factory string
	store   *state.Store
}

func globalsFrom(c *cli.Context) (*globals, error) {
	root, err := filepath.Abs(c.String("root"))
	if err != nil {
		return nil, fmt.Errorf("--root %q: %w", c.String("root"), err)
	}
	g := &globals{
		root: root, kernel: c.String("kernel"), initrd: c.String("initrd"), qemu: c.String("qemu"),
		accel: c.String("accel"), machine: c.String("machine"),
		cpus: c.Int("default_cpus"), memoryMiB: c.Int("default_memory"),
		debug: c.Bool("debug"), systemdCgroup: c.Bool("systemd-cgroup"), logPath: c.String("log"), logFormat: c.String("log-format"),
		factory: c.String("factory"),
		store:   &state.Store{Root: root},
	}
	// The pod daemon runs from "/": relative boot files are resolved against our directory.
	for _, p := range []*string{&g.kernel, &g.initrd} {
		if *p != "" {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	if strings.Contains(g.qemu, "/") { // a bare name is looked up on PATH
		if abs, err := filepath.Abs(g.qemu); err == nil {
			g.qemu = abs
		}
	}
	if g.qemu != "" {
		// Every VM this process or one it starts (factory daemon, holders, shims) launches
		// runs this QEMU: they read the default from the environment.
		if err := os.Setenv(hypervisor.EnvQEMU, g.qemu); err != nil {
			return nil, fmt.Errorf("--qemu %q: %w", g.qemu, err)
		}
	}
	switch g.accel {
	case hypervisor.AccelAuto, hypervisor.AccelKVM, hypervisor.AccelTCG:
	default:
		return nil, fmt.Errorf("--accel %q: use auto, kvm or tcg: %w", g.accel, errdefs.ErrInvalidArgument)
	}
	switch g.machine {
	case hypervisor.MachineMicroVM, hypervisor.MachineQ35:
	default:
		return nil, fmt.Errorf("--machine %q: use microvm or q35: %w", g.machine, errdefs.ErrInvalidArgument)
	}
	if g.cpus < 1 || g.cpus > 64 {
		return nil, fmt.Errorf("--default_cpus %d: between 1 and 64: %w", g.cpus, errdefs.ErrInvalidArgument)
	}
	if g.memoryMiB < 64 {
		return nil, fmt.Errorf("--default_memory %d MiB: at least 64 MiB: %w", g.memoryMiB, errdefs.ErrInvalidArgument)
	}
	return g, nil
}

// templateDir is where the template factory keeps its templates: @templates/ of the state
// root (/run/runv/@templates by default), made a tmpfs if it is not on one. "@" cannot
// start a container id, so no container collides with it.
func (g *globals) templateDir() string { return filepath.Join(g.root, "@templates") }

// boot is how pod VMs are made under these options.
func (g *globals) boot() poddaemon.Boot {
	return poddaemon.Boot{Base: g.vmConfig(), Factory: g.factory, Root: g.root, TemplateDir: g.templateDir()}
}

// vmConfig is the VMs' kernel, initrd, accelerator, machine and default size.
func (g *globals) vmConfig() hypervisor.Config {
	return hypervisor.Config{
		Kernel: g.kernel, Initrd: g.initrd, Accel: g.accel, Machine: g.machine,
		CPUs: g.cpus, MemoryMiB: g.memoryMiB, QEMU: g.qemu,
	}
}

// checkBootFiles fails fast, before anything is created, when the kernel or initrd is missing.
func (g *globals) checkBootFiles() error { return g.boot().CheckFiles() }
