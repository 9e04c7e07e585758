package main

import (
	"bufio"
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// blocks reads a QEMU "-d in_asm" log of a guest and counts the blocks QEMU translated, by
// owner — the kernel, the agent, the exec helper, any other user-space program (busybox) —
// and by phase; the agent's blocks are named by its symbol table (an agent built without
// -s -w), by package and by function. A user-space block is the agent's when its first
// instruction's bytes are the agent binary's at that address: busybox is loaded at the
// agent's 0x400000 too, so the address alone does not tell. The helper is told by its
// address (cmd/runv-exec/build.sh OUT -Wl,-Ttext-segment=0x10000000 links it there).
// Phases start at the first agent block of each -split function, in order, e.g.
// "agent.(*Agent).startPod" then "agent.(*Agent).newContainer" (docs/performance.md, "The
// agent's Go off the cold path, stop 16").
func blocks(args []string) error {
	fs := flag.NewFlagSet("blocks", flag.ExitOnError)
	agentPath := fs.String("agent", "", "the agent binary the guest ran, with its symbols")
	helperBase := fs.Uint64("helper", 0x10000000, "the exec helper's load address (0: none)")
	top := fs.Int("top", 0, "also list the agent's N functions with the most blocks, per phase")
	kernelPath := fs.String("kernel", "", "the guest's vmlinux (with symbols): also list its N (-top) functions with the most blocks, per phase")
	var splits []string
	fs.Func("split", "a phase starts at the first agent block of this function (suffix match; repeat in order)", func(s string) error {
		splits = append(splits, s)
		return nil
	})
	fs.Parse(args)
	if *agentPath == "" || fs.NArg() != 1 {
		return fmt.Errorf("blocks: usage: blocks -agent AGENT [-kernel VMLINUX] [-split FUNC]... [-top N] LOG")
	}
	img, err := loadImage(*agentPath)
	if err != nil {
		return err
	}
	var kernel *symbolTable
	if *kernelPath != "" {
		k, err := loadImage(*kernelPath)
		if err != nil {
			return err
		}
		kernel = &k.symbolTable
	}
	log, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer log.Close()
	phases, err := countBlocks(log, img, kernel, *helperBase, splits)
	if err != nil {
		return fmt.Errorf("blocks: %s: %w", fs.Arg(0), err)
	}
	for _, p := range phases {
		p.print(os.Stdout, *top)
	}
	return nil
}

// image is what blocks needs of the agent binary: its bytes at an address and the function
// an address is in.
type image interface {
	bytesAt(addr uint64, n int) []byte
	symbol(addr uint64) string
}

// elfImage is an ELF binary's loaded segments and function symbols.
type elfImage struct {
	segs []*elf.Prog
	symbolTable
}

// symbolTable names the function an address is in.
type symbolTable struct {
	addrs []uint64 // function start addresses, sorted
	names []string
}

func loadImage(path string) (*elfImage, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("blocks: the agent: %w", err)
	}
	img := &elfImage{}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			img.segs = append(img.segs, p)
		}
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("blocks: %s has no symbols (build it without -s -w): %w", path, err)
	}
	slices.SortFunc(syms, func(a, b elf.Symbol) int { return cmp.Compare(a.Value, b.Value) })
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			img.addrs = append(img.addrs, s.Value)
			img.names = append(img.names, s.Name)
		}
	}
	return img, nil
}

func (img *elfImage) bytesAt(addr uint64, n int) []byte {
	for _, p := range img.segs {
		if addr >= p.Vaddr && addr+uint64(n) <= p.Vaddr+p.Filesz {
			b := make([]byte, n)
			if _, err := p.ReadAt(b, int64(addr-p.Vaddr)); err != nil {
				return nil
			}
			return b
		}
	}
	return nil
}

func (t *symbolTable) symbol(addr uint64) string {
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > addr }) - 1
	if i < 0 {
		return "?"
	}
	return t.names[i]
}

// phase is one phase's counts.
type phase struct {
	name      string
	owners    map[string]int // kernel, agent, helper, other
	packages  map[string]int // the agent's blocks by Go package
	functions map[string]int // and by function
	kernel    map[string]int // the kernel's blocks by function, when its symbols are known
}

func newPhase(name string) *phase {
	return &phase{name: name, owners: map[string]int{}, packages: map[string]int{}, functions: map[string]int{}, kernel: map[string]int{}}
}

// kernelBase: x86-64 kernel addresses are in the upper half.
const kernelBase = 0xffff800000000000

// countBlocks reads the log's blocks (each "IN:" entry; its first instruction line is
// "0xADDR:  BYTES  ASM") and counts them per phase; kernel (nil: not named) names the
// kernel's blocks.
func countBlocks(r io.Reader, img image, kernel *symbolTable, helperBase uint64, splits []string) ([]*phase, error) {
	cur := newPhase("start")
	phases := []*phase{cur}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	inBlock := false
	// A QEMU built without a disassembler (runv's own) logs the block's address alone, then
	// its bytes on an "OBJD-T: HEX" line.
	var bareAddr uint64
	haveBareAddr := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "IN:") {
			inBlock, haveBareAddr = true, false
			continue
		}
		if !inBlock {
			continue
		}
		addr, code, ok := firstInstruction(line)
		if !ok {
			if a, isAddr := bareAddress(line); isAddr {
				bareAddr, haveBareAddr = a, true
				continue
			}
			hexBytes, isObjd := strings.CutPrefix(line, "OBJD-T: ")
			if !haveBareAddr || !isObjd {
				continue
			}
			b, err := hex.DecodeString(strings.TrimSpace(hexBytes))
			if err != nil || len(b) == 0 {
				continue
			}
			addr, code = bareAddr, b
		}
		inBlock = false
		owner := "other"
		switch {
		case addr >= kernelBase:
			owner = "kernel"
			if kernel != nil {
				cur.kernel[kernel.symbol(addr)]++
			}
		case bytes.Equal(img.bytesAt(addr, len(code)), code):
			owner = "agent"
			fn := img.symbol(addr)
			if len(phases) <= len(splits) && strings.HasSuffix(fn, splits[len(phases)-1]) {
				cur = newPhase(splits[len(phases)-1])
				phases = append(phases, cur)
			}
			cur.packages[goPackage(fn)]++
			cur.functions[fn]++
		case helperBase != 0 && addr >= helperBase && addr < helperBase+0x10000000:
			owner = "helper"
		}
		cur.owners[owner]++
	}
	return phases, sc.Err()
}

// firstInstruction parses "0xADDR:  8b 05 ...  mnemonic": the address and the instruction's
// bytes.
func firstInstruction(line string) (uint64, []byte, bool) {
	a, rest, ok := strings.Cut(line, ":")
	if !ok || !strings.HasPrefix(a, "0x") {
		return 0, nil, false
	}
	addr, err := strconv.ParseUint(a[2:], 16, 64)
	if err != nil {
		return 0, nil, false
	}
	var code []byte
	for _, f := range strings.Fields(rest) {
		if len(f) != 2 {
			break
		}
		b, err := hex.DecodeString(f)
		if err != nil {
			break
		}
		code = append(code, b...)
	}
	if len(code) == 0 {
		return 0, nil, false
	}
	return addr, code, true
}

// bareAddress parses "0xADDR:" with nothing after it but spaces.
func bareAddress(line string) (uint64, bool) {
	a, rest, ok := strings.Cut(line, ":")
	if !ok || !strings.HasPrefix(a, "0x") || strings.TrimSpace(rest) != "" {
		return 0, false
	}
	addr, err := strconv.ParseUint(a[2:], 16, 64)
	return addr, err == nil
}

// goPackage is a Go symbol's package path: "github.com/x/y.(*T).M" -> "github.com/x/y".
func goPackage(sym string) string {
	dir, name := "", sym
	if i := strings.LastIndexByte(sym, '/'); i >= 0 {
		dir, name = sym[:i+1], sym[i+1:]
	}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		name = name[:i]
	}
	return dir + name
}

func (p *phase) print(w io.Writer, top int) {
	total := 0
	for _, n := range p.owners {
		total += n
	}
	fmt.Fprintf(w, "== %s: %d blocks:", p.name, total)
	for _, o := range []string{"kernel", "agent", "helper", "other"} {
		fmt.Fprintf(w, " %s %d", o, p.owners[o])
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "   agent by package:")
	for _, kv := range sortedCounts(p.packages, 12) {
		fmt.Fprintf(w, " %s %d;", kv.key, kv.n)
	}
	fmt.Fprintln(w)
	for _, kv := range sortedCounts(p.functions, top) {
		fmt.Fprintf(w, "   %5d %s\n", kv.n, kv.key)
	}
	if len(p.kernel) > 0 && top > 0 {
		fmt.Fprintf(w, "   kernel by function:\n")
		for _, kv := range sortedCounts(p.kernel, top) {
			fmt.Fprintf(w, "   %5d %s\n", kv.n, kv.key)
		}
	}
}

type keyCount struct {
	key string
	n   int
}

// sortedCounts is m's n largest entries, largest first (ties by key).
func sortedCounts(m map[string]int, n int) []keyCount {
	var out []keyCount
	for k, v := range m {
		out = append(out, keyCount{k, v})
	}
	slices.SortFunc(out, func(a, b keyCount) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	return out[:min(n, len(out))]
}
