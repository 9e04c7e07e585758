package agentproto

import (
	"bytes"
	"encoding"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// unmarshal decodes data into v (a non-nil pointer) as encoding/json.Unmarshal does, but
// learns only the struct types the data contains.
//
// Why: on the first decode of a type, encoding/json builds the field tables and the
// encoders of every type reachable from it, whether the data uses them or not: for a
// NEWCONTAINER, the whole OCI spec (65 struct types and 290 fields, Windows, Solaris,
// FreeBSD and z/OS included). A cold-booted guest (a direct pod, a template clone) runs
// that construction once, as code QEMU translates for the first time: 20-30 ms of the
// first NEWCONTAINER (docs/performance.md, "Direct boot, stop 12").
//
// The data is checked with json.Valid first (invalid data gets encoding/json's own
// error), then walked by a small lexer. Structs, maps with string keys, slices, pointers,
// strings, booleans and numbers are decoded here with encoding/json's rules: field names
// from the json tag (or the Go name), matched exactly, else case-insensitively; unknown
// keys skipped; a later duplicate key winning; null clearing a pointer, map or slice and
// leaving other values alone; numbers range-checked. Any other value, and any value whose
// JSON does not fit its type, is handed to encoding/json as it stands (its subtree only),
// so types with their own UnmarshalJSON, interfaces, embedded structs and the errors are
// encoding/json's. A []byte is base64 as encoding/json reads it; json.RawMessage keeps
// the value's bytes.
func unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || !json.Valid(data) {
		return json.Unmarshal(data, v)
	}
	l := &lexer{data: data}
	return l.decode(rv.Elem())
}

// lexer walks JSON that json.Valid accepted: it only finds where values start and end.
type lexer struct {
	data []byte
	pos  int
}

func (l *lexer) skipSpace() {
	for l.pos < len(l.data) {
		switch l.data[l.pos] {
		case ' ', '\t', '\n', '\r':
			l.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte without consuming it.
func (l *lexer) peek() byte {
	l.skipSpace()
	return l.data[l.pos]
}

// value consumes the next value and returns its bytes.
func (l *lexer) value() []byte {
	l.skipSpace()
	start := l.pos
	depth := 0
	for {
		c := l.data[l.pos]
		switch c {
		case '"':
			l.skipString()
		case '{', '[':
			depth++
			l.pos++
		case '}', ']':
			depth--
			l.pos++
		default:
			for l.pos < len(l.data) && !strings.ContainsRune(",:}] \t\n\r", rune(l.data[l.pos])) {
				l.pos++
			}
		}
		if depth == 0 {
			return l.data[start:l.pos]
		}
		for l.pos < len(l.data) && strings.ContainsRune(",: \t\n\r", rune(l.data[l.pos])) {
			l.pos++
		}
	}
}

// skipString consumes a string token (l.pos at its opening quote).
func (l *lexer) skipString() {
	l.pos++
	for l.data[l.pos] != '"' {
		if l.data[l.pos] == '\\' {
			l.pos++
		}
		l.pos++
	}
	l.pos++
}

// str consumes a string token and returns its value.
func (l *lexer) str() string {
	start := l.pos
	l.skipString()
	raw := l.data[start:l.pos]
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner)
	}
	var s string
	_ = json.Unmarshal(raw, &s) // escapes and invalid UTF-8, as encoding/json reads them
	return s
}

// delim consumes the next delimiter ({, }, [, ] or :), which json.Valid guaranteed is
// there.
func (l *lexer) delim() {
	l.skipSpace()
	l.pos++
}

// more reports whether an object or array has another member, consuming the comma.
func (l *lexer) more() bool {
	switch l.peek() {
	case ',':
		l.pos++
		return true
	case '}', ']':
		return false
	}
	return true // the first member
}

// decode decodes the next value into v (addressable).
func (l *lexer) decode(v reflect.Value) error {
	t := v.Type()
	c := l.peek()
	if t == rawMessageType {
		// What json.RawMessage's UnmarshalJSON keeps: a copy of the value's bytes ("null"
		// included).
		v.SetBytes(append([]byte(nil), l.value()...))
		return nil
	}
	if !decodesItself(t) {
		return l.byEncodingJSON(v)
	}
	switch {
	case c == 'n': // null
		l.pos += len("null")
		switch t.Kind() {
		case reflect.Pointer, reflect.Map, reflect.Slice:
			v.SetZero()
		}
		return nil
	case t.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		return l.decode(v.Elem())
	case c == '{' && t.Kind() == reflect.Struct:
		return l.decodeStruct(v)
	case c == '{' && t.Kind() == reflect.Map:
		return l.decodeMap(v)
	case c == '[' && t.Kind() == reflect.Slice:
		return l.decodeSlice(v)
	case c == '"' && t.Kind() == reflect.String:
		v.SetString(l.str())
		return nil
	case c == '"' && t == bytesType:
		// base64, as encoding/json reads a []byte; its error if the text is not.
		start := l.pos
		if b, err := base64.StdEncoding.DecodeString(l.str()); err == nil {
			v.SetBytes(b)
			return nil
		}
		l.pos = start
	case (c == 't' || c == 'f') && t.Kind() == reflect.Bool:
		v.SetBool(c == 't')
		l.value()
		return nil
	case c == '-' || c >= '0' && c <= '9':
		start := l.pos
		if setNumber(v, string(l.value())) {
			return nil
		}
		l.pos = start
	}
	return l.byEncodingJSON(v)
}

// byEncodingJSON hands the next value to encoding/json: a type decode does not handle, or
// JSON that does not fit the type (encoding/json's error).
func (l *lexer) byEncodingJSON(v reflect.Value) error {
	return json.Unmarshal(l.value(), v.Addr().Interface())
}

// setNumber sets v to the number n; false when n does not fit v's type.
func setNumber(v reflect.Value, n string) bool {
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := strconv.ParseInt(n, 10, 64)
		if err != nil || v.OverflowInt(i) {
			return false
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		u, err := strconv.ParseUint(n, 10, 64)
		if err != nil || v.OverflowUint(u) {
			return false
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(n, v.Type().Bits())
		if err != nil || v.OverflowFloat(f) {
			return false
		}
		v.SetFloat(f)
	default:
		return false
	}
	return true
}

func (l *lexer) decodeStruct(v reflect.Value) error {
	fields := fieldsOf(v.Type())
	l.delim() // {
	for l.more() {
		l.skipSpace()
		key := l.str()
		l.delim() // :
		i := fields.field(key)
		if i < 0 {
			l.value()
			continue
		}
		if err := l.decode(v.Field(i)); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	l.delim() // }
	return nil
}

func (l *lexer) decodeMap(v reflect.Value) error {
	t := v.Type()
	if v.IsNil() {
		v.Set(reflect.MakeMap(t))
	}
	l.delim() // {
	for l.more() {
		l.skipSpace()
		key := l.str()
		l.delim() // :
		elem := reflect.New(t.Elem()).Elem()
		if err := l.decode(elem); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.SetMapIndex(reflect.ValueOf(key).Convert(t.Key()), elem)
	}
	l.delim() // }
	return nil
}

func (l *lexer) decodeSlice(v reflect.Value) error {
	// As encoding/json: the elements overwrite the slice from its start, an empty array
	// gives an empty (not nil) slice.
	v.SetLen(0)
	if v.IsNil() {
		v.Set(reflect.MakeSlice(v.Type(), 0, 0))
	}
	l.delim() // [
	for i := 0; l.more(); i++ {
		v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
		if err := l.decode(v.Index(i)); err != nil {
			return fmt.Errorf("[%d]: %w", i, err)
		}
	}
	l.delim() // ]
	return nil
}

var (
	rawMessageType      = reflect.TypeFor[json.RawMessage]()
	bytesType           = reflect.TypeFor[[]byte]()
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// structFields is what decode knows of a struct type: its JSON names.
type structFields struct {
	byName map[string]int // exact JSON name -> field index
	names  []string       // JSON names by field index ("" = not decoded), for case-insensitive matches
}

var (
	typesMu sync.Mutex
	// decodes caches, per type decode met, whether it decodes it itself; fields, the
	// fields of the structs among them.
	decodes = map[reflect.Type]bool{}
	fields  = map[reflect.Type]*structFields{}
)

// decodesItself reports whether decode decodes values of t itself (their elements are
// checked when met) rather than handing them to encoding/json.
func decodesItself(t reflect.Type) bool {
	typesMu.Lock()
	defer typesMu.Unlock()
	ok, known := decodes[t]
	if known {
		return ok
	}
	ok = !t.Implements(jsonUnmarshalerType) && !t.Implements(textUnmarshalerType)
	// encoding/json looks for the methods of *t only when t is named (its indirect): for
	// the others ([]string, map[string]string...) reflect.PointerTo would make the pointer
	// type at run time, which a binary without it in its type links pays with a lookup by
	// name and a new type (~100 translated blocks of a cold guest's first NEWCONTAINER).
	if ok && t.Kind() != reflect.Pointer && t.Name() != "" {
		pt := reflect.PointerTo(t)
		ok = !pt.Implements(jsonUnmarshalerType) && !pt.Implements(textUnmarshalerType)
	}
	switch t.Kind() {
	case reflect.Bool, reflect.String, reflect.Pointer,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
	case reflect.Slice:
		// Of the slices of bytes, whose JSON is base64, only []byte itself: encoding/json
		// has rules for byte types with methods.
		ok = ok && (t.Elem().Kind() != reflect.Uint8 || t == bytesType)
	case reflect.Map:
		ok = ok && t.Key().Kind() == reflect.String && !reflect.PointerTo(t.Key()).Implements(textUnmarshalerType)
	case reflect.Struct:
		if ok {
			var f *structFields
			if f, ok = structFieldsOf(t); ok {
				fields[t] = f
			}
		}
	default: // interfaces, arrays...
		ok = false
	}
	decodes[t] = ok
	return ok
}

func fieldsOf(t reflect.Type) *structFields {
	typesMu.Lock()
	defer typesMu.Unlock()
	return fields[t]
}

// structFieldsOf lists t's JSON names; false for a struct encoding/json treats with rules
// decode does not have (embedded fields, the ",string" option, tags it ignores).
func structFieldsOf(t reflect.Type) (*structFields, bool) {
	f := &structFields{byName: make(map[string]int, t.NumField()), names: make([]string, t.NumField())}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if sf.Anonymous {
			return nil, false
		}
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",string,") || !plainTagName(name) {
			return nil, false
		}
		if name == "" {
			name = sf.Name
		}
		if _, dup := f.byName[name]; dup {
			return nil, false // encoding/json's dominance rules
		}
		f.byName[name] = i
		f.names[i] = name
	}
	return f, true
}

// plainTagName: a tag name of letters, digits and the punctuation encoding/json accepts.
func plainTagName(name string) bool {
	for _, c := range name {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c)) {
			return false
		}
	}
	return true
}

// field finds the struct field a JSON key names: exactly, else case-insensitively (as
// encoding/json does); -1 for none.
func (f *structFields) field(key string) int {
	if i, ok := f.byName[key]; ok {
		return i
	}
	for i, name := range f.names {
		if name != "" && strings.EqualFold(name, key) {
			return i
		}
	}
	return -1
}
