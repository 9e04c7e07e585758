package agentproto

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	devices "github.com/opencontainers/cgroups/devices/config"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The control frame's envelope and the two payloads every cold guest decodes on its way to
// its first container, STARTPOD's Pod and NEWCONTAINER's Container, have decoders written
// for their types: the generic
// decoder (unmarshal: json.Valid's scanner, the lexer, reflect's field tables) is ~600
// blocks that QEMU translates in every cold-booted guest and template clone before its
// first container, and the spec's decode ~250 more, which a container made from the
// host's conversion does not need until an exec or an update (docs/performance.md, "The
// agent's frames decoded by hand, stop 18").
//
// These decoders read JSON as encoding/json.Marshal writes these types (compact, the
// types' own keys, each once) and nothing else: on anything else (whitespace, a key in
// another case or unknown, a duplicate, null, a number of another form, invalid JSON)
// they give up and the frame goes to the generic
// decoder, whose result and errors are encoding/json's. What they accept decodes as the
// generic decoder decodes it into a zero value (TestHandDecodersAsTheGenericOne,
// FuzzHandDecoders).

// UnmarshalPod decodes STARTPOD's payload, as Unmarshal into a zero Pod does.
func (f ControlFrame) UnmarshalPod() (Pod, error) {
	var p Pod
	if handPod(f.Data, &p) {
		return p, nil
	}
	p = Pod{}
	return p, f.Unmarshal(&p)
}

// ReceivedContainer is NEWCONTAINER's payload as the agent reads it. When the host sent
// its conversion (Converted), the spec's bytes are kept and decoded only when Spec is
// called; InitProcess has what creating the container from the conversion needs of the
// spec's process without that decode.
type ReceivedContainer struct {
	// Container is the payload; its Spec is nil while the spec is kept undecoded.
	Container
	spec []byte
	// init is the spec's process's args, terminal flag and console size, the rest unset.
	init *specs.Process
}

// Spec returns the container's spec, decoding it the first time (an error when it does
// not fit the spec's types: ErrProtocol). Not safe for concurrent first calls.
func (r *ReceivedContainer) Spec() (*specs.Spec, error) {
	if r.spec != nil {
		var s *specs.Spec
		if err := unmarshal(r.spec, &s); err != nil {
			return nil, fmt.Errorf("%w: NEWCONTAINER's spec: %v", ErrProtocol, err)
		}
		r.Container.Spec, r.spec = s, nil
	}
	return r.Container.Spec, nil
}

// InitProcess returns the spec's process with its args, terminal flag and console size
// (the rest only when the spec was decoded), or nil for a spec without one.
func (r *ReceivedContainer) InitProcess() *specs.Process {
	if r.init != nil {
		return r.init
	}
	if r.Container.Spec == nil {
		return nil
	}
	return r.Container.Spec.Process
}

// UnmarshalContainer decodes NEWCONTAINER's payload, as Unmarshal into a zero Container
// does, but for a payload with the host's conversion, whose spec waits for
// ReceivedContainer.Spec (an error of its own types shows there, not here).
func (f ControlFrame) UnmarshalContainer() (ReceivedContainer, error) {
	var r ReceivedContainer
	if handContainer(f.Data, &r) {
		return r, nil
	}
	r = ReceivedContainer{}
	return r, f.Unmarshal(&r.Container)
}

// handReader reads the hand decoders' subset of JSON. A reader that met something
// outside it is bad, and every read after that returns zero values. Its code is kept
// small, as it is what a cold guest translates instead of the generic decoder: objects
// are read against a table of their keys (members), and the types' fields set by a
// switch on the key's index.
type handReader struct {
	data  []byte
	pos   int
	bad   bool
	depth int
}

func (h *handReader) fail() { h.bad = true }

// is consumes c if it is next.
func (h *handReader) is(c byte) bool {
	if !h.bad && h.pos < len(h.data) && h.data[h.pos] == c {
		h.pos++
		return true
	}
	return false
}

func (h *handReader) expect(c byte) {
	if !h.is(c) {
		h.fail()
	}
}

// list reads an array, calling elem with the reader at each element.
func (h *handReader) list(elem func()) {
	h.expect('[')
	if h.is(']') {
		return
	}
	for !h.bad {
		elem()
		if !h.is(',') {
			break
		}
	}
	h.expect(']')
}

// members reads an object whose keys are among keys, each once, calling value with the
// index of each key and the reader at its value. Another key fails the reader, or with
// skipOthers is skipped as encoding/json skips it: unless it is one of keys in another
// case, which encoding/json would take for that key.
func (h *handReader) members(keys []string, skipOthers bool, value func(i int)) {
	var seen uint64
	h.expect('{')
	if h.is('}') {
		return
	}
	for !h.bad {
		key := h.str()
		h.expect(':')
		i := 0
		for i < len(keys) && keys[i] != key {
			i++
		}
		switch {
		case i < len(keys) && seen&(1<<i) == 0:
			seen |= 1 << i
			value(i)
		case i == len(keys) && skipOthers && !foldsInto(key, keys):
			h.skip()
		default:
			h.fail()
		}
		if !h.is(',') {
			break
		}
	}
	h.expect('}')
}

func foldsInto(key string, keys []string) bool {
	for _, k := range keys {
		if strings.EqualFold(key, k) {
			return true
		}
	}
	return false
}

// str reads a string: printable ASCII here, one with escapes or other text as
// encoding/json reads it.
func (h *handReader) str() string {
	start := h.pos
	h.expect('"')
	for !h.bad {
		if h.pos >= len(h.data) {
			h.fail()
			break
		}
		c := h.data[h.pos]
		if c == '"' {
			h.pos++
			return string(h.data[start+1 : h.pos-1])
		}
		if c < 0x20 || c == '\\' || c >= 0x80 {
			h.pos = start
			h.skipString()
			var s string
			if h.bad || json.Unmarshal(h.data[start:h.pos], &s) != nil {
				h.fail()
			}
			return s
		}
		h.pos++
	}
	return ""
}

func (h *handReader) strs() []string {
	out := []string{} // an empty array is an empty slice, as encoding/json makes it
	h.list(func() { out = append(out, h.str()) })
	return out
}

func (h *handReader) boolean() bool {
	if h.literal("true") {
		return true
	}
	if !h.literal("false") {
		h.fail()
	}
	return false
}

func (h *handReader) literal(word string) bool {
	if !h.bad && len(h.data)-h.pos >= len(word) && string(h.data[h.pos:h.pos+len(word)]) == word {
		h.pos += len(word)
		return true
	}
	return false
}

// uint reads an unsigned integer of at most bits bits: digits, no leading zero.
func (h *handReader) uint(bits int) uint64 {
	start := h.pos
	limit := uint64(math.MaxUint64) >> (64 - bits)
	var n uint64
	for !h.bad && h.pos < len(h.data) && h.data[h.pos] >= '0' && h.data[h.pos] <= '9' {
		d := uint64(h.data[h.pos] - '0')
		if n > (limit-d)/10 {
			h.fail()
		}
		n = n*10 + d
		h.pos++
	}
	if h.pos == start || h.data[start] == '0' && h.pos-start > 1 {
		h.fail()
	}
	return n
}

// int reads a signed integer of at most bits bits.
func (h *handReader) int(bits int) int64 {
	neg := h.is('-')
	n := h.uint(bits)
	switch {
	case neg && n <= 1<<(bits-1):
		return -int64(n)
	case !neg && n < 1<<(bits-1):
		return int64(n)
	}
	h.fail()
	return 0
}

// bytes reads a []byte: base64 (the standard alphabet, padded) in a string, as
// encoding/json reads it; anything else (escapes, line breaks, which encoding/json's
// base64 skips) fails the reader.
func (h *handReader) bytes() []byte {
	s := h.str()
	if len(s)%4 != 0 {
		h.fail()
	}
	out := make([]byte, 0, len(s)/4*3)
	for i := 0; i+4 <= len(s) && !h.bad; i += 4 {
		var v uint32
		n := 0 // the group's characters before its padding
		for j := 0; j < 4; j++ {
			c := s[i+j]
			d := strings.IndexByte(base64Alphabet, c)
			switch {
			case d >= 0 && n == j:
				n++
			case c == '=' && i+4 == len(s) && j >= 2 && (j == 3 || s[i+3] == '='):
				d = 0
			default:
				h.fail()
			}
			v = v<<6 | uint32(d&63)
		}
		out = append(out, byte(v>>16), byte(v>>8), byte(v))[:len(out)+n*3/4]
	}
	return out
}

const base64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// skip reads any JSON value without whitespace, numbers only as integers (escapes and
// non-ASCII text included) and returns its bytes.
func (h *handReader) skip() []byte {
	start := h.pos
	if h.depth++; h.depth > 10000 { // encoding/json's nesting limit
		h.fail()
	}
	switch {
	case h.bad || h.pos >= len(h.data):
		h.fail()
	case h.data[h.pos] == '{':
		h.members(nil, true, nil)
	case h.data[h.pos] == '[':
		h.list(func() { h.skip() })
	case h.data[h.pos] == '"':
		h.skipString()
	case h.literal("true"), h.literal("false"), h.literal("null"):
	default:
		h.is('-')
		digits := h.pos
		for h.pos < len(h.data) && h.data[h.pos] >= '0' && h.data[h.pos] <= '9' {
			h.pos++
		}
		if h.pos == digits || h.data[digits] == '0' && h.pos-digits > 1 {
			h.fail()
		}
	}
	h.depth--
	return h.data[start:h.pos]
}

// skipString reads any valid string.
func (h *handReader) skipString() {
	h.pos++
	for !h.bad {
		if h.pos >= len(h.data) {
			h.fail()
			return
		}
		c := h.data[h.pos]
		h.pos++
		switch {
		case c == '"':
			return
		case c < 0x20:
			h.fail()
		case c != '\\':
		case h.pos < len(h.data) && strings.IndexByte(`"\/bfnrt`, h.data[h.pos]) >= 0:
			h.pos++
		case h.pos+5 <= len(h.data) && h.data[h.pos] == 'u':
			for _, x := range h.data[h.pos+1 : h.pos+5] {
				if strings.IndexByte("0123456789abcdefABCDEF", x) < 0 {
					h.fail()
				}
			}
			h.pos += 5
		default:
			h.fail()
		}
	}
}

// compactJSON reports whether data is one JSON value without whitespace (numbers
// integers only).
func compactJSON(data []byte) bool {
	h := &handReader{data: data}
	h.skip()
	return h.done()
}

// done reports whether the reader read all of its data without failing.
func (h *handReader) done() bool { return !h.bad && h.pos == len(h.data) }

var envelopeKeys, remoteErrorKeys = []string{"id", "data", "error"}, []string{"kind", "message"}

// handEnvelope decodes a control frame's body: every frame's, the boot's first ones
// included.
func handEnvelope(data []byte, env *envelope) bool {
	h := &handReader{data: data}
	h.members(envelopeKeys, false, func(i int) {
		switch i {
		case 0:
			env.ID = h.uint(64)
		case 1:
			env.Data = h.skip()
		case 2:
			e := &RemoteError{}
			env.Error = e
			h.members(remoteErrorKeys, false, func(i int) {
				if i == 0 {
					e.Kind = h.str()
				} else {
					e.Message = h.str()
				}
			})
		}
	})
	return h.done()
}

var podKeys = []string{"id", "hostname", "dns", "dnsSearch", "dnsOptions", "shareTag", "timeUnixNano", "entropy"}

func handPod(data []byte, p *Pod) bool {
	h := &handReader{data: data}
	h.members(podKeys, false, func(i int) {
		switch i {
		case 0:
			p.ID = h.str()
		case 1:
			p.Hostname = h.str()
		case 2:
			p.DNS = h.strs()
		case 3:
			p.DNSSearch = h.strs()
		case 4:
			p.DNSOptions = h.strs()
		case 5:
			p.ShareTag = h.str()
		case 6:
			p.TimeUnixNano = h.int(64)
		case 7:
			p.Entropy = h.bytes()
		}
	})
	return h.done()
}

var (
	containerKeys = []string{"id", "rootfs", "spec", "io", "consoleRows", "consoleCols", "member", "sharePid", "start", "converted"}
	stdioKeys     = []string{"stdio", "stderr", "noStdin"}
	specKeys      = []string{"process"}
	processKeys   = []string{"args", "terminal", "consoleSize"}
	boxKeys       = []string{"height", "width"}
	convertedKeys = []string{"fields", "caps", "cloneFlags", "rootPropagation", "readonlyRoot", "setupDev", "cgroupNs", "cgroupPath", "deviceRules", "deviceProgram"}
	ruleKeys      = []string{"type", "major", "minor", "permissions", "allow"}
)

// handContainer decodes a Container that carries the host's conversion; the spec is
// checked to be JSON and kept, and its process's args, terminal and console size read.
func handContainer(data []byte, r *ReceivedContainer) bool {
	h := &handReader{data: data}
	m := &r.Container
	h.members(containerKeys, false, func(i int) {
		switch i {
		case 0:
			m.ID = h.str()
		case 1:
			m.Rootfs = h.str()
		case 2:
			// The spec's bytes, and of its process what the create engine's init needs.
			start := h.pos
			h.members(specKeys, true, func(int) { r.init = h.initProcess() })
			r.spec = h.data[start:h.pos]
		case 3:
			h.members(stdioKeys, false, func(i int) {
				switch i {
				case 0:
					m.IO.Stdio = h.uint(64)
				case 1:
					m.IO.Stderr = h.uint(64)
				case 2:
					m.IO.NoStdin = h.boolean()
				}
			})
		case 4:
			m.ConsoleRows = uint16(h.uint(16))
		case 5:
			m.ConsoleCols = uint16(h.uint(16))
		case 6:
			m.Member = h.boolean()
		case 7:
			m.SharePID = h.boolean()
		case 8:
			m.Start = h.boolean()
		case 9:
			m.Converted = h.converted()
		}
	})
	// Without the host's conversion the agent needs the whole spec at once: the generic
	// decoder's.
	return h.done() && m.Converted != nil && r.spec != nil
}

func (h *handReader) initProcess() *specs.Process {
	p := &specs.Process{}
	h.members(processKeys, true, func(i int) {
		switch i {
		case 0:
			p.Args = h.strs()
		case 1:
			p.Terminal = h.boolean()
		case 2:
			b := &specs.Box{}
			p.ConsoleSize = b
			h.members(boxKeys, true, func(i int) {
				if i == 0 {
					b.Height = uint(h.uint(64))
				} else {
					b.Width = uint(h.uint(64))
				}
			})
		}
	})
	return p
}

func (h *handReader) converted() *Converted {
	c := &Converted{}
	h.members(convertedKeys, false, func(i int) {
		switch i {
		case 0:
			c.Fields = h.bytes()
		case 1:
			c.Caps = []uint64{}
			h.list(func() { c.Caps = append(c.Caps, h.uint(64)) })
		case 2:
			c.CloneFlags = uint32(h.uint(32))
		case 3:
			c.RootPropagation = uint32(h.uint(32))
		case 4:
			c.ReadonlyRoot = h.boolean()
		case 5:
			c.SetupDev = h.boolean()
		case 6:
			c.CgroupNS = h.boolean()
		case 7:
			c.CgroupPath = h.str()
		case 8:
			c.DeviceRules = []*devices.Rule{}
			h.list(func() {
				r := &devices.Rule{}
				c.DeviceRules = append(c.DeviceRules, r)
				h.members(ruleKeys, false, func(i int) {
					switch i {
					case 0:
						r.Type = devices.Type(h.int(32))
					case 1:
						r.Major = h.int(64)
					case 2:
						r.Minor = h.int(64)
					case 3:
						r.Permissions = devices.Permissions(h.str())
					case 4:
						r.Allow = h.boolean()
					}
				})
			})
		case 9:
			c.DeviceProgram = h.bytes()
		}
	})
	return c
}
