package qemu

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/runv-project/runv/hypervisor"
)

// The clone's command line is the template's but for what must differ: no kernel,
// -incoming defer, and a private mapping of the RAM file. Devices, their options and their
// order are identical (a clone with a different device set does not load, or silently
// misses the extra device).
func TestBuildArgsTemplateAndClone(t *testing.T) {
	for _, machine := range []string{hypervisor.MachineMicroVM, hypervisor.MachineQ35} {
		t.Run(machine, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Machine = machine
			mt := map[string]string{hypervisor.MachineMicroVM: "microvm", hypervisor.MachineQ35: "pc-q35-7.2"}[machine]
			tmpl := buildArgs(spec{cfg: cfg, accel: hypervisor.AccelTCG, tscKHz: 2596124,
				machineType: mt, memFile: "/run/runv/templates/t/memory", memShared: true})
			clone := buildArgs(spec{cfg: cfg, accel: hypervisor.AccelTCG, tscKHz: 2596124,
				machineType: mt, memFile: "/run/runv/templates/t/memory", incoming: true})

			backend := "memory-backend-file,id=mem,size=128M,mem-path=/run/runv/templates/t/memory,share="
			if !hasPair(tmpl, "-object", backend+"on") {
				t.Errorf("template: no shared file backend in %q", tmpl)
			}
			if !hasPair(clone, "-object", backend+"off") {
				t.Errorf("clone: no private file backend in %q", clone)
			}
			wantMachine := "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,accel=tcg,memory-backend=mem"
			if machine == hypervisor.MachineQ35 {
				wantMachine = "pc-q35-7.2,accel=tcg,memory-backend=mem"
			}
			for _, args := range [][]string{tmpl, clone} {
				if !hasPair(args, "-machine", wantMachine) {
					t.Errorf("-machine %q missing in %q", wantMachine, args)
				}
				if machine == hypervisor.MachineMicroVM && !hasPair(args, "-global", "virtio-mmio.force-legacy=false") {
					t.Errorf("microvm without force-legacy=false: %q", args)
				}
			}
			for _, opt := range []string{"-kernel", "-initrd", "-append"} {
				if !slices.Contains(tmpl, opt) {
					t.Errorf("template without %s", opt)
				}
				if slices.Contains(clone, opt) {
					t.Errorf("clone with %s", opt)
				}
			}
			if !hasPair(clone, "-incoming", "defer") || slices.Contains(tmpl, "-incoming") {
				t.Errorf("-incoming defer must be on the clone only")
			}
			if !hasPair(clone, cloneNoAnnounce[0], cloneNoAnnounce[1]) || hasPair(tmpl, cloneNoAnnounce[0], cloneNoAnnounce[1]) {
				t.Errorf("the clone only must start without the announce (%q)", cloneNoAnnounce)
			}
			// No VM may spawn: the template saves its state to a socket, a clone loads it from
			// an inherited descriptor.
			for _, args := range [][]string{tmpl, clone} {
				if !hasPair(args, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny,spawn=deny") {
					t.Errorf("sandbox: %q", args)
				}
			}
			if d := argsDiff(tmpl, clone); len(d) != 1 || !strings.Contains(d[0], "share=on") {
				t.Errorf("template and clone differ beyond the RAM mapping: %q", d)
			}
			// With translations: the accelerator's property and its descriptor differ too.
			tmpl = buildArgs(spec{cfg: cfg, accel: hypervisor.AccelTCG, tscKHz: 2596124,
				machineType: mt, memFile: "/run/runv/templates/t/memory", memShared: true, translations: saveTranslations})
			clone = buildArgs(spec{cfg: cfg, accel: hypervisor.AccelTCG, tscKHz: 2596124,
				machineType: mt, memFile: "/run/runv/templates/t/memory", incoming: true, translations: loadTranslations})
			want := []string{`"fd=7,set=7" vs "fd=8,set=8"`, `"tcg,x-tb-snapshot-save=/dev/fdset/7" vs "tcg,x-tb-snapshot-load=/dev/fdset/8"`}
			if d := argsDiff(tmpl, clone); len(d) != 3 || !slices.Equal(d[:2], want) || !strings.Contains(d[2], "share=on") {
				t.Errorf("template and clone with translations differ beyond the RAM mapping and the translations: %q", d)
			}
		})
	}
}

// argsDiff compares two command lines without the options a clone drops or adds.
func argsDiff(a, b []string) []string {
	strip := func(args []string) []string {
		var out []string
		for i := 0; i < len(args); i++ {
			switch args[i] {
			case "-kernel", "-initrd", "-append", "-incoming":
				i++
				continue
			}
			if i+1 < len(args) && args[i] == cloneNoAnnounce[0] && args[i+1] == cloneNoAnnounce[1] {
				i++
				continue
			}
			out = append(out, args[i])
		}
		return out
	}
	a, b = strip(a), strip(b)
	if len(a) != len(b) {
		return []string{fmt.Sprintf("%d arguments vs %d:\n%q\n%q", len(a), len(b), a, b)}
	}
	var d []string
	for i := range a {
		if a[i] != b[i] {
			d = append(d, fmt.Sprintf("%q vs %q", a[i], b[i]))
		}
	}
	return d
}

func TestParseMachineHelp(t *testing.T) {
	out := `Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
`
	got := parseMachineHelp(strings.NewReader(out))
	if got["q35"] != "pc-q35-7.2" || got["pc"] != "pc-i440fx-7.2" || len(got) != 2 {
		t.Errorf("aliases = %v", got)
	}
}
