package qemu

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/runv-project/runv/hypervisor"
)

func baseConfig() hypervisor.Config {
	return withDefaults(hypervisor.Config{
		ID:       "pod1",
		Dir:      "/run/runv/pod1/vm",
		Kernel:   "/k/vmlinux",
		Initrd:   "/k/initrd.img",
		ShareDir: "/run/runv/pod1/share",
	})
}

// The microvm command line in full: this is the configuration measured in
// notes/guest-boot.md, and any change to it should be deliberate.
func TestBuildArgsMicroVMFull(t *testing.T) {
	got := buildArgs(spec{cfg: baseConfig(), accel: hypervisor.AccelTCG, tscKHz: 2596124, nics: 2, inheritSockets: true})
	want := []string{
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny,spawn=deny",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-name", "pod1",
		"-machine", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,accel=tcg",
		"-global", "virtio-mmio.force-legacy=false",
		"-cpu", "qemu64,+arat", // the guest's tick stops when idle (tcgCPU)
		"-m", "128M",
		"-smp", "1",
		"-kernel", "/k/vmlinux",
		"-initrd", "/k/initrd.img",
		"-append", "console=ttyS0 quiet panic=-1 pty.legacy_count=0 runv.ports=vport0p1,vport0p2 tsc_early_khz=2596124 tsc=reliable noreplace-smp highres=off lapic_timer_khz=1000000",
		"-add-fd", "fd=3,set=3", // the console pipe, drained into console.log
		"-chardev", "file,id=console,path=/dev/fdset/3,append=on",
		"-serial", "chardev:console",
		"-device", "virtio-serial-device,id=vser0",
		// The sockets are runv's (vmsockets.go), inherited listening: 4 QMP, 5 control, 6
		// stream.
		"-chardev", "socket,id=ctl,fd=5,server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,nr=1,chardev=ctl,name=sh.hyper.channel.0",
		"-chardev", "socket,id=stream,fd=6,server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,nr=2,chardev=stream,name=sh.hyper.channel.1",
		"-fsdev", "local,id=fs0,path=/run/runv/pod1/share,security_model=none",
		"-device", "virtio-9p-device,fsdev=fs0,mount_tag=runvshare",
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng0",
		// The NICs (nic.go): taps QEMU makes in its own network namespace, with the
		// virtio-net header; the slot MACs are how the guest finds each device.
		"-netdev", "tap,id=net0,ifname=tap0_runv,script=no,downscript=no,vnet_hdr=on",
		"-device", "virtio-net-device,netdev=net0,mac=02:72:75:6e:76:00",
		"-netdev", "tap,id=net1,ifname=tap1_runv,script=no,downscript=no,vnet_hdr=on",
		"-device", "virtio-net-device,netdev=net1,mac=02:72:75:6e:76:01",
		"-chardev", "socket,id=qmp,fd=4,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", "/run/runv/pod1/vm/qemu.pid",
	}
	if !slices.Equal(got, want) {
		t.Errorf("args differ:\n got %q\nwant %q", got, want)
	}
}

// q35's NICs are PCI devices without an option ROM (no firmware boots from them).
func TestBuildArgsQ35NICs(t *testing.T) {
	c := baseConfig()
	c.Machine = hypervisor.MachineQ35
	got := strings.Join(buildArgs(spec{cfg: c, accel: hypervisor.AccelTCG, nics: 1}), " ")
	if want := "-device virtio-net-pci,romfile=,netdev=net0,mac=02:72:75:6e:76:00"; !strings.Contains(got, want) {
		t.Errorf("q35 command line lacks %q:\n%s", want, got)
	}
}

// q35 VMs boot with NICPorts empty PCIe root ports for NICs plugged later (nicplug.go);
// microvm has no PCI to plug into.
func TestBuildArgsNICPorts(t *testing.T) {
	c := baseConfig()
	c.Machine = hypervisor.MachineQ35
	got := strings.Join(buildArgs(spec{cfg: c, accel: hypervisor.AccelTCG, nics: 2}), " ")
	for i := 0; i < NICPorts; i++ {
		want := fmt.Sprintf("-device pcie-root-port,id=nicport%d,bus=pcie.0,chassis=%d,io-reserve=0", i, i+1)
		if !strings.Contains(got, want) {
			t.Errorf("q35 command line lacks %q:\n%s", want, got)
		}
	}
	if got := strings.Join(buildArgs(spec{cfg: baseConfig(), accel: hypervisor.AccelTCG, nics: 2}), " "); strings.Contains(got, "pcie-root-port") {
		t.Errorf("a microvm command line has root ports:\n%s", got)
	}
}

// A NIC of a VM with several vCPUs has a queue pair per vCPU (up to maxNICQueues); MSI-X
// vectors only exist on PCI.
func TestNICPair(t *testing.T) {
	for _, tc := range []struct {
		microvm        bool
		queues         int
		netdev, device string
	}{
		{false, 1, "tap,id=net1,ifname=tap1_runv,script=no,downscript=no,vnet_hdr=on", "virtio-net-pci,romfile=,netdev=net1,mac=02:72:75:6e:76:01"},
		{false, 2, "tap,id=net1,ifname=tap1_runv,script=no,downscript=no,vnet_hdr=on,queues=2", "virtio-net-pci,romfile=,mq=on,vectors=6,netdev=net1,mac=02:72:75:6e:76:01"},
		{true, 1, "tap,id=net1,ifname=tap1_runv,script=no,downscript=no,vnet_hdr=on", "virtio-net-device,netdev=net1,mac=02:72:75:6e:76:01"},
		{true, 4, "tap,id=net1,ifname=tap1_runv,script=no,downscript=no,vnet_hdr=on,queues=4", "virtio-net-device,mq=on,netdev=net1,mac=02:72:75:6e:76:01"},
	} {
		got := nicPair(1, tc.microvm, tc.queues)
		if want := []string{"-netdev", tc.netdev, "-device", tc.device}; !slices.Equal(got, want) {
			t.Errorf("nicPair(1, microvm=%v, %d queues) = %q, want %q", tc.microvm, tc.queues, got, want)
		}
	}
	if got := nicQueues(64); got != maxNICQueues {
		t.Errorf("nicQueues(64) = %d, want %d", got, maxNICQueues)
	}
}

func TestBuildArgs(t *testing.T) {
	q35 := func(mod func(*hypervisor.Config)) hypervisor.Config {
		c := baseConfig()
		c.Machine = hypervisor.MachineQ35
		if mod != nil {
			mod(&c)
		}
		return c
	}
	tests := []struct {
		name string
		spec spec
		// want holds option/value pairs that must appear next to each other.
		want [][2]string
		// absent holds arguments that must not appear at all.
		absent []string
		// appendWant is the exact -append value, if set.
		appendWant string
	}{
		{
			name: "microvm under kvm: host cpu, no tsc_early_khz, no noreplace-smp",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelKVM, tscKHz: 2596124},
			want: [][2]string{
				{"-machine", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,accel=kvm"},
				{"-cpu", "host"},
			},
			appendWant: "console=ttyS0 quiet panic=-1 pty.legacy_count=0 runv.ports=vport0p1,vport0p2",
		},
		{
			name:       "microvm under tcg without a known tsc: no tsc_early_khz",
			spec:       spec{cfg: baseConfig(), accel: hypervisor.AccelTCG},
			want:       [][2]string{{"-cpu", "qemu64,+arat"}},
			appendWant: "console=ttyS0 quiet panic=-1 pty.legacy_count=0 runv.ports=vport0p1,vport0p2 noreplace-smp highres=off lapic_timer_khz=1000000",
		},
		{
			name: "kernel params follow the runtime's own",
			spec: spec{cfg: func() hypervisor.Config {
				c := baseConfig()
				c.KernelParams = []string{"runv.debug=1", "a=b"}
				return c
			}(), accel: hypervisor.AccelTCG, tscKHz: 1000},
			appendWant: "console=ttyS0 quiet panic=-1 pty.legacy_count=0 runv.ports=vport0p1,vport0p2 tsc_early_khz=1000 tsc=reliable noreplace-smp highres=off lapic_timer_khz=1000000 runv.debug=1 a=b",
		},
		{
			name: "q35 under tcg: pci devices, no mmio global, no tsc",
			spec: spec{cfg: q35(nil), accel: hypervisor.AccelTCG, tscKHz: 2596124},
			want: [][2]string{
				{"-machine", "q35,accel=tcg"},
				{"-device", "virtio-serial-pci,id=vser0"},
				{"-device", "virtio-9p-pci,fsdev=fs0,mount_tag=runvshare"},
				{"-device", "virtio-rng-pci,rng=rng0"},
				{"-m", "128M"},
				{"-smp", "1"},
			},
			absent:     []string{"-global", "-cpu", "virtio-serial-device,id=vser0"},
			appendWant: "console=ttyS0 quiet panic=-1 pty.legacy_count=0 runv.ports=vport0p1,vport0p2 noreplace-smp",
		},
		{
			name: "a template that keeps its share mounted: the 9p device migrates its fids",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelTCG, memFile: "/t/memory", memShared: true, keepShare: true},
			want: [][2]string{{"-device", "virtio-9p-device,fsdev=fs0,mount_tag=runvshare,x-migrate-fids=on"}},
		},
		{
			name: "a template that saves its translations: -accel with the file's descriptor, none in -machine",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelTCG, memFile: "/t/memory", memShared: true, translations: saveTranslations},
			want: [][2]string{
				{"-add-fd", "fd=7,set=7"},
				{"-accel", "tcg,x-tb-snapshot-save=/dev/fdset/7"},
				{"-machine", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,memory-backend=mem"},
			},
		},
		{
			name: "a clone that restores translations: after its device state's descriptor",
			spec: spec{cfg: q35(nil), accel: hypervisor.AccelTCG, machineType: "pc-q35-7.2", memFile: "/t/memory", incoming: true, translations: loadTranslations},
			want: [][2]string{
				{"-add-fd", "fd=8,set=8"},
				{"-accel", "tcg,x-tb-snapshot-load=/dev/fdset/8"},
				{"-machine", "pc-q35-7.2,memory-backend=mem"},
			},
		},
		{
			name: "a direct boot that saves its translations at its first stop",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelTCG, translations: saveBootTranslations},
			want: [][2]string{
				{"-add-fd", "fd=7,set=7"},
				{"-accel", "tcg,x-tb-snapshot-save=/dev/fdset/7,x-tb-snapshot-save-on-stop=on"},
				{"-machine", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on"},
			},
		},
		{
			name: "a direct boot that restores an earlier boot's translations",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelTCG, translations: loadTranslations},
			want: [][2]string{
				{"-add-fd", "fd=7,set=7"},
				{"-accel", "tcg,x-tb-snapshot-load=/dev/fdset/7"},
			},
		},
		{
			name: "q35 with hot-plug room",
			spec: spec{cfg: q35(func(c *hypervisor.Config) { c.CPUs, c.MaxCPUs, c.MemoryMiB, c.MaxMemoryMiB = 2, 4, 256, 1024 }), accel: hypervisor.AccelTCG},
			want: [][2]string{
				{"-m", "size=256M,slots=8,maxmem=1024M"},
				{"-smp", "cpus=2,maxcpus=4"},
			},
		},
		{
			name: "q35 with max equal to boot size: no hot-plug options",
			spec: spec{cfg: q35(func(c *hypervisor.Config) { c.CPUs, c.MaxCPUs, c.MemoryMiB, c.MaxMemoryMiB = 2, 2, 256, 256 }), accel: hypervisor.AccelTCG},
			want: [][2]string{{"-m", "256M"}, {"-smp", "2"}},
		},
		{
			name: "q35 under kvm",
			spec: spec{cfg: q35(nil), accel: hypervisor.AccelKVM},
			want: [][2]string{{"-machine", "q35,accel=kvm"}, {"-cpu", "host"}},
		},
		{
			name: "commas are escaped in option lists only",
			spec: spec{cfg: func() hypervisor.Config {
				c := baseConfig()
				c.ID, c.Dir, c.ShareDir, c.Kernel = "a,b", "/r/x,y", "/s/p,q", "/k/v,l"
				return c
			}(), accel: hypervisor.AccelTCG},
			want: [][2]string{
				{"-name", "a,,b"},
				{"-chardev", "socket,id=ctl,path=/r/x,,y/ctl.sock,server=on,wait=off"},
				{"-fsdev", "local,id=fs0,path=/s/p,,q,security_model=none"},
				{"-qmp", "unix:/r/x,,y/qmp.sock,server=on,wait=off"},
				{"-kernel", "/k/v,l"},
				{"-pidfile", "/r/x,y/qemu.pid"},
			},
		},
		{
			// A bare boot by a bench tool (CommandLine) and the KVM probe: QEMU makes them.
			name: "sockets at their paths unless inherited",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelTCG},
			want: [][2]string{
				{"-chardev", "socket,id=ctl,path=/run/runv/pod1/vm/ctl.sock,server=on,wait=off"},
				{"-chardev", "socket,id=stream,path=/run/runv/pod1/vm/stream.sock,server=on,wait=off"},
				{"-qmp", "unix:/run/runv/pod1/vm/qmp.sock,server=on,wait=off"},
			},
			absent: []string{"-mon"},
		},
		{
			name: "probe reads the console on stdio",
			spec: spec{cfg: baseConfig(), accel: hypervisor.AccelKVM, serial: "stdio"},
			want: [][2]string{{"-serial", "stdio"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := buildArgs(tt.spec)
			for _, w := range tt.want {
				if !hasPair(args, w[0], w[1]) {
					t.Errorf("missing %s %q in %q", w[0], w[1], args)
				}
			}
			for _, a := range tt.absent {
				if slices.Contains(args, a) {
					t.Errorf("unexpected %q in %q", a, args)
				}
			}
			if tt.appendWant != "" && !hasPair(args, "-append", tt.appendWant) {
				t.Errorf("-append: want %q in %q", tt.appendWant, args)
			}
			// Every option that takes a value has one: no accidental odd slices.
			for i, a := range args {
				if strings.HasPrefix(a, "-") && i+1 < len(args) && a != "-nodefaults" && a != "-no-user-config" && a != "-no-reboot" && strings.HasPrefix(args[i+1], "-") {
					t.Errorf("option %s has no value (next: %s)", a, args[i+1])
				}
			}
		})
	}
}

func hasPair(args []string, opt, val string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt && args[i+1] == val {
			return true
		}
	}
	return false
}

func TestParseCPUMHz(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"processor\t: 0\ncpu MHz\t\t: 2596.124\nflags\t: fpu\n", 2596124, false},
		{"cpu MHz\t\t: 2600.000\ncpu MHz\t\t: 1200.000\n", 2600000, false},
		{"cpu MHz : 2999.9996\n", 3000000, false},
		{"processor\t: 0\n", 0, true},
		{"cpu MHz\t\t: fast\n", 0, true},
	}
	for _, tt := range tests {
		got, err := parseCPUMHz(strings.NewReader(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseCPUMHz(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
