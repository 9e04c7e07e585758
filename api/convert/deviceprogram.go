package convert

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"

	devices "github.com/opencontainers/cgroups/devices/config"
)

// DeviceProgram compiles a container's device rules into the eBPF program
// (BPF_PROG_TYPE_CGROUP_DEVICE) that libcontainer's cgroups/devices package generates for
// them, byte for byte (TestDeviceProgramIsLibcontainers compares the two): libcontainer's
// generator goes through its cgroup v1 emulator and cilium's assembler, ~600 translated
// blocks of a cold guest's first container, for a program of a few dozen instructions.
// !ok when libcontainer would refuse the rules: the caller leaves them to libcontainer,
// whose error the user then gets.
//
// The rules are applied in order as cgroup v1's devices controller applies them: a rule of
// type 'a' sets the default (allow or deny everything) and forgets the exceptions; any
// other adds its access to the exceptions when it goes against the default, and removes
// it from them when it goes with it, unless that would punch a hole into a wildcard
// exception. The program checks the exceptions in the order of their (major, minor, type)
// and returns the default when none matches.
func DeviceProgram(rules []*devices.Rule) (insns []byte, ok bool) {
	type deviceID struct {
		typ          devices.Type
		major, minor int64
	}
	defaultAllow := false
	exceptions := map[deviceID]uint8{}
	for _, r := range rules {
		switch r.Type {
		case devices.WildcardDevice:
			defaultAllow = r.Allow
			clear(exceptions)
			continue
		case devices.CharDevice, devices.BlockDevice:
		default:
			return nil, false
		}
		id, access := deviceID{r.Type, r.Major, r.Minor}, deviceAccess(r.Permissions)
		if r.Allow != defaultAllow {
			exceptions[id] |= access
			continue
		}
		for _, wider := range []deviceID{{r.Type, devices.Wildcard, r.Minor}, {r.Type, r.Major, devices.Wildcard}, {r.Type, devices.Wildcard, devices.Wildcard}} {
			if wider != id && exceptions[wider]&access != 0 {
				return nil, false
			}
		}
		if exceptions[id] &^= access; exceptions[id] == 0 {
			delete(exceptions, id)
		}
	}
	ids := make([]deviceID, 0, len(exceptions))
	for id, access := range exceptions {
		if access != 0 {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b deviceID) int {
		return cmp.Or(cmp.Compare(a.major, b.major), cmp.Compare(a.minor, b.minor), cmp.Compare(a.typ, b.typ))
	})

	// struct bpf_cgroup_dev_ctx at R1: u32 access_type (device type in the low 16 bits,
	// access in the high ones), u32 major, u32 minor.
	p := make(bpfProgram, 0, 8*(6+7*len(ids)+2))
	p = p.ins(bpfLdxMemW, 2, 1, 0, 0).ins(bpfAlu32AndK, 2, 0, 0, 0xFFFF)
	p = p.ins(bpfLdxMemW, 3, 1, 0, 0).ins(bpfAlu32RshK, 3, 0, 0, 16)
	p = p.ins(bpfLdxMemW, 4, 1, 4, 0).ins(bpfLdxMemW, 5, 1, 8, 0)
	for _, id := range ids {
		if id.major > math.MaxUint32 || id.minor > math.MaxUint32 {
			return nil, false
		}
		bpfType := int32(bpfDevCgDevChar)
		if id.typ == devices.BlockDevice {
			bpfType = bpfDevCgDevBlock
		}
		access := exceptions[id]
		checkAccess, checkMajor, checkMinor := access != accessRWM, id.major >= 0, id.minor >= 0
		// Each failed check jumps over the rest of this exception's block (n instructions).
		n, at := 3, 0
		for _, check := range []bool{checkAccess, checkAccess, checkAccess, checkMajor, checkMinor} {
			if check {
				n++
			}
		}
		next := func() int16 { at++; return int16(n - at) }
		p = p.ins(bpfJmpJneK, 2, 0, next(), bpfType)
		if checkAccess {
			// (R3 & access) != R3: an access the exception does not name.
			p = p.ins(bpfAlu32MovX, 1, 3, 0, 0).ins(bpfAlu32AndK, 1, 0, 0, int32(access))
			at += 2
			p = p.ins(bpfJmpJneX, 1, 3, next(), 0)
		}
		if checkMajor {
			p = p.ins(bpfJmpJneK, 4, 0, next(), int32(id.major))
		}
		if checkMinor {
			p = p.ins(bpfJmpJneK, 5, 0, next(), int32(id.minor))
		}
		p = p.ins(bpfAlu32MovK, 0, 0, 0, boolInt32(!defaultAllow)).ins(bpfJmpExit, 0, 0, 0, 0)
	}
	return p.ins(bpfAlu32MovK, 0, 0, 0, boolInt32(defaultAllow)).ins(bpfJmpExit, 0, 0, 0, 0), true
}

// deviceAccess is the BPF_DEVCG_ACC_* set of an OCI access string; letters other than
// r, w and m are ignored, as libcontainer's emulator ignores them.
func deviceAccess(p devices.Permissions) uint8 {
	var a uint8
	for _, c := range p {
		switch c {
		case 'r':
			a |= bpfDevCgAccRead
		case 'w':
			a |= bpfDevCgAccWrite
		case 'm':
			a |= bpfDevCgAccMknod
		}
	}
	return a
}

func boolInt32(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

// The kernel's values (linux/bpf.h) of what DeviceProgram needs.
const (
	bpfDevCgAccMknod = 1
	bpfDevCgAccRead  = 2
	bpfDevCgAccWrite = 4
	accessRWM        = bpfDevCgAccMknod | bpfDevCgAccRead | bpfDevCgAccWrite
	bpfDevCgDevBlock = 1
	bpfDevCgDevChar  = 2

	bpfLdxMemW   = 0x61 // BPF_LDX | BPF_MEM | BPF_W
	bpfAlu32AndK = 0x54 // BPF_ALU | BPF_AND | BPF_K
	bpfAlu32RshK = 0x74 // BPF_ALU | BPF_RSH | BPF_K
	bpfAlu32MovK = 0xb4 // BPF_ALU | BPF_MOV | BPF_K
	bpfAlu32MovX = 0xbc // BPF_ALU | BPF_MOV | BPF_X
	bpfJmpJneK   = 0x55 // BPF_JMP | BPF_JNE | BPF_K
	bpfJmpJneX   = 0x5d // BPF_JMP | BPF_JNE | BPF_X
	bpfJmpExit   = 0x95 // BPF_JMP | BPF_EXIT
)

// bpfProgram is eBPF instructions as the kernel reads them on a little-endian machine (the
// guest is x86-64): opcode, dst and src registers in one byte, offset, immediate.
type bpfProgram []byte

func (p bpfProgram) ins(op, dst, src uint8, off int16, imm int32) bpfProgram {
	p = append(p, op, src<<4|dst)
	p = binary.LittleEndian.AppendUint16(p, uint16(off))
	return binary.LittleEndian.AppendUint32(p, uint32(imm))
}
