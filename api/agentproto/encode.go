package agentproto

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// The frames a cold-booted guest sends and reads on its way to its first container (READY,
// GETVERSION's answer, the ACKs, ProcessStarted, PROCESSEXIT, and every frame's envelope)
// are encoded here by hand, and their envelopes decoded by unmarshal's lexer, so that such
// a guest never runs encoding/json's encoder or decoder: the first use of either builds its
// reflection-driven machinery (field tables, per-type encoders), code that QEMU translates
// for the first time in every direct boot and template clone (docs/performance.md, "Direct
// boot, stop 13"). The output is byte for byte json.Marshal's (TestAppendersMatchJSON,
// FuzzAppendJSONString); Marshal sends any other payload through json.Marshal.

func (r Ready) appendJSON(b []byte) []byte {
	if r.BootSteps == "" {
		return append(b, "{}"...)
	}
	b = append(b, `{"bootSteps":`...)
	b = appendJSONString(b, r.BootSteps)
	return append(b, '}')
}

func (v VersionInfo) appendJSON(b []byte) []byte {
	b = append(b, `{"version":`...)
	b = strconv.AppendInt(b, int64(v.Version), 10)
	b = append(b, `,"agent":`...)
	b = appendJSONString(b, v.Agent)
	return append(b, '}')
}

func (p ProcessStarted) appendJSON(b []byte) []byte {
	b = append(b, `{"pid":`...)
	b = strconv.AppendInt(b, int64(p.Pid), 10)
	if p.Started {
		b = append(b, `,"started":true`...)
	}
	return append(b, '}')
}

func (e ProcessExit) appendJSON(b []byte) []byte {
	b = append(b, `{"container":`...)
	b = appendJSONString(b, e.Container)
	b = append(b, `,"process":`...)
	b = appendJSONString(b, e.Process)
	b = append(b, `,"exitCode":`...)
	b = strconv.AppendInt(b, int64(e.ExitCode), 10)
	if e.Signal != 0 {
		b = append(b, `,"signal":`...)
		b = strconv.AppendInt(b, int64(e.Signal), 10)
	}
	if e.Error != "" {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, e.Error)
	}
	if e.OOMKilled {
		b = append(b, `,"oomKilled":true`...)
	}
	return append(b, '}')
}

func (e *RemoteError) appendJSON(b []byte) []byte {
	b = append(b, '{')
	if e.Kind != "" {
		b = append(b, `"kind":`...)
		b = appendJSONString(b, e.Kind)
		b = append(b, ',')
	}
	b = append(b, `"message":`...)
	b = appendJSONString(b, e.Message)
	return append(b, '}')
}

// appendEnvelope appends a control frame's JSON body: json.Marshal(envelope{...}) for data
// that is compact JSON, which is what Marshal makes. Other valid JSON is carried as it is
// (json.Marshal would have compacted it); invalid JSON is refused.
func appendEnvelope(b []byte, f ControlFrame) ([]byte, error) {
	// Compact JSON is checked by the hand decoders' reader: in a cold guest, encoding/json's
	// scanner is ~100 blocks translated for the boot's first frame (READY).
	if len(f.Data) > 0 && !compactJSON(f.Data) && !json.Valid(f.Data) {
		return nil, fmt.Errorf("the payload is not valid JSON")
	}
	b = append(b, '{')
	sep := false
	if f.ID != 0 {
		b = append(b, `"id":`...)
		b = strconv.AppendUint(b, f.ID, 10)
		sep = true
	}
	if len(f.Data) > 0 {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"data":`...)
		b = append(b, f.Data...)
		sep = true
	}
	if f.Error != nil {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"error":`...)
		b = f.Error.appendJSON(b)
	}
	return append(b, '}'), nil
}

// appendJSONString appends s as a JSON string the way json.Marshal writes one: quotes and
// backslashes escaped; \b, \f, \n, \r and \t by name; other control characters and the
// HTML-sensitive <, > and & as \u00XX; U+2028 and U+2029 as \u2028 and \u2029; each byte of
// invalid UTF-8 as \ufffd; everything else as it is.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	done := 0 // s[:done] is in b
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			var esc string
			switch {
			case c == '"' || c == '\\':
				esc = string([]byte{'\\', c})
			case c == '\b':
				esc = `\b`
			case c == '\f':
				esc = `\f`
			case c == '\n':
				esc = `\n`
			case c == '\r':
				esc = `\r`
			case c == '\t':
				esc = `\t`
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				esc = string([]byte{'\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf]})
			default:
				i++
				continue
			}
			b = append(b, s[done:i]...)
			b = append(b, esc...)
			i++
			done = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		var esc string
		switch {
		case r == utf8.RuneError && size == 1:
			esc = `\ufffd`
		case r == '\u2028':
			esc = `\u2028`
		case r == '\u2029':
			esc = `\u2029`
		default:
			i += size
			continue
		}
		b = append(b, s[done:i]...)
		b = append(b, esc...)
		i += size
		done = i
	}
	b = append(b, s[done:]...)
	return append(b, '"')
}
