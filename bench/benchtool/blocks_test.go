package main

import (
	"bytes"
	"debug/elf"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestFirstInstruction(t *testing.T) {
	cases := []struct {
		line string
		addr uint64
		code []byte
		ok   bool
	}{
		{"0x00401000:  48 8b 05 10 00 00 00     movq     0x10(%rip), %rax", 0x401000, []byte{0x48, 0x8b, 0x05, 0x10, 0, 0, 0}, true},
		{"0xffffffff81000000:  c3                       retq     ", 0xffffffff81000000, []byte{0xc3}, true},
		{"0xfffffff0:  e9 8d ff                 jmp      0xff80", 0xfffffff0, []byte{0xe9, 0x8d, 0xff}, true},
		{"----------------", 0, nil, false},
		{"", 0, nil, false},
		{"0x1000:  ", 0, nil, false},
		{"OUT: [size=42]", 0, nil, false},
	}
	for _, c := range cases {
		addr, code, ok := firstInstruction(c.line)
		if ok != c.ok || addr != c.addr || !bytes.Equal(code, c.code) {
			t.Errorf("firstInstruction(%q) = %#x, % x, %v; want %#x, % x, %v", c.line, addr, code, ok, c.addr, c.code, c.ok)
		}
	}
}

func TestGoPackage(t *testing.T) {
	for sym, want := range map[string]string{
		"github.com/runv-project/runv/agent.(*Agent).newContainer":                      "github.com/runv-project/runv/agent",
		"runtime.mapaccess2_faststr":                                                    "runtime",
		"internal/runtime/maps.(*Map).Delete":                                           "internal/runtime/maps",
		"github.com/opencontainers/runc/libcontainer/specconv.CreateLibcontainerConfig": "github.com/opencontainers/runc/libcontainer/specconv",
		"_init": "_init",
	} {
		if got := goPackage(sym); got != want {
			t.Errorf("goPackage(%q) = %q, want %q", sym, got, want)
		}
	}
}

// fakeImage is an agent of two functions whose code is known.
type fakeImage map[uint64][]byte

func (f fakeImage) bytesAt(addr uint64, n int) []byte {
	if b, ok := f[addr]; ok && len(b) >= n {
		return b[:n]
	}
	return nil
}

func (f fakeImage) symbol(addr uint64) string {
	return map[uint64]string{0x401000: "x/agent.(*Agent).newContainer", 0x402000: "runtime.mallocgc"}[addr]
}

func TestCountBlocks(t *testing.T) {
	img := fakeImage{0x401000: {0x55, 0x48}, 0x402000: {0xc3}}
	kernel := &symbolTable{addrs: []uint64{0xffffffff81000000, 0xffffffff81000010}, names: []string{"_stext", "do_idle"}}
	log := strings.Join([]string{
		"IN: ", "0xffffffff81000000:  c3                       retq     ", "",
		"IN: ", "0x00402000:  c3                       retq     ", "",
		// busybox at an agent address, other bytes
		"IN: ", "0x00401000:  31 c0                    xorl     %eax, %eax", "",
		"IN: ", "0x00401000:  55                       pushq    %rbp", "0x00401001:  48 89 e5  movq %rsp, %rbp", "",
		"IN: ", "0x10000400:  90                       nop      ", "",
		"IN: ", "0x00402000:  c3                       retq     ", "",
		"IN: ", "0xffffffff81000010:  90                       nop      ", "",
	}, "\n")
	phases, err := countBlocks(strings.NewReader(log), img, kernel, 0x10000000, []string{"(*Agent).newContainer", "never"})
	if err != nil {
		t.Fatal(err)
	}
	if len(phases) != 2 {
		t.Fatalf("%d phases, want 2 (start, newContainer; no block of \"never\")", len(phases))
	}
	want := []map[string]int{
		{"kernel": 1, "agent": 1, "other": 1},
		{"agent": 2, "helper": 1, "kernel": 1},
	}
	for i, p := range phases {
		if !reflect.DeepEqual(p.owners, want[i]) {
			t.Errorf("phase %s: owners %v, want %v", p.name, p.owners, want[i])
		}
	}
	if got := phases[1].packages; !reflect.DeepEqual(got, map[string]int{"x/agent": 1, "runtime": 1}) {
		t.Errorf("the second phase's agent packages: %v", got)
	}
	for i, want := range []map[string]int{{"_stext": 1}, {"do_idle": 1}} {
		if got := phases[i].kernel; !reflect.DeepEqual(got, want) {
			t.Errorf("phase %s: kernel functions %v, want %v", phases[i].name, got, want)
		}
	}
}

// runv's own QEMU has no disassembler: a block is its address line, then "OBJD-T: HEX".
func TestCountBlocksOfQEMUWithoutDisassembler(t *testing.T) {
	img := fakeImage{0x401000: {0x55, 0x48}, 0x402000: {0xc3}}
	log := strings.Join([]string{
		"IN: ", "0xffffffff81000000:  ", "OBJD-T: c3", "",
		"IN: ", "0x0000000000401000:  ", "OBJD-T: 31c0", "", // busybox at an agent address
		"IN: ", "0x0000000000401000:  ", "OBJD-T: 5548", "",
		"IN: ", "0x0000000010000400:  ", "OBJD-T: 90", "",
		"IN: ", "0x0000000000402000:  ", "OBJD-T: c3", "",
	}, "\n")
	phases, err := countBlocks(strings.NewReader(log), img, nil, 0x10000000, []string{"(*Agent).newContainer"})
	if err != nil {
		t.Fatal(err)
	}
	want := []map[string]int{{"kernel": 1, "other": 1}, {"agent": 2, "helper": 1}}
	if len(phases) != len(want) {
		t.Fatalf("%d phases, want %d", len(phases), len(want))
	}
	for i, p := range phases {
		if !reflect.DeepEqual(p.owners, want[i]) {
			t.Errorf("phase %s: owners %v, want %v", p.name, p.owners, want[i])
		}
	}
}

// The ELF side on a real binary: benchtool itself, built with its symbols; its code as the
// segments give it must be what its .text section holds at the same address.
func TestLoadImageReadsCodeAndNamesIt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds benchtool (a few seconds); -short skips it")
	}
	bin := filepath.Join(t.TempDir(), "benchtool")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	img, err := loadImage(bin)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.Index(img.names, "main.goPackage")
	if i < 0 {
		t.Fatal("main.goPackage is not among the binary's functions")
	}
	addr := img.addrs[i]
	for _, a := range []uint64{addr, addr + 5} {
		if got := img.symbol(a); got != "main.goPackage" {
			t.Errorf("symbol(%#x) = %q, want main.goPackage", a, got)
		}
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	text := f.Section(".text")
	data, err := text.Data()
	if err != nil {
		t.Fatal(err)
	}
	want := data[addr-text.Addr : addr-text.Addr+16]
	if got := img.bytesAt(addr, 16); !bytes.Equal(got, want) {
		t.Errorf("bytesAt(%#x) = % x, .text holds % x", addr, got, want)
	}
	if img.bytesAt(0x10, 4) != nil {
		t.Error("bytes at an address outside the binary's segments")
	}
}
