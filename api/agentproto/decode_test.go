package agentproto

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// exampleSpec is runc's `runc spec` with the fields a client adds on top filled in.
func exampleSpec() *specs.Spec {
	one, two := int64(1), uint64(2)
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal: true, User: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10, 20}, Umask: new(uint32)},
			Args: []string{"sh", "-c", "echo \"hé\" \\u00e9 \n"}, Env: []string{"PATH=/usr/bin:/bin", "TERM=xterm"},
			Cwd:             "/",
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}, Effective: []string{"CAP_KILL"}},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true, OOMScoreAdj: new(int),
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: "c1",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Annotations: map[string]string{"io.kubernetes.cri.sandbox-id": "c1", "empty": ""},
		Linux: &specs.Linux{
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			Sysctl:      map[string]string{"net.ipv4.ip_forward": "1"},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "c", Major: &one, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: &one, Swap: &one, DisableOOMKiller: new(bool)},
				CPU:     &specs.LinuxCPU{Shares: &two, Quota: &one, Cpus: "0"},
				Pids:    &specs.LinuxPids{Limit: &one},
				Unified: map[string]string{"memory.high": "max"},
			},
			Namespaces: []specs.LinuxNamespace{{Type: "pid"}, {Type: "network", Path: "/proc/1/ns/net"}},
			Devices:    []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229, FileMode: new(os.FileMode)}},
			Seccomp: &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, DefaultErrnoRet: new(uint),
				Architectures: []specs.Arch{specs.ArchX86_64},
				Syscalls: []specs.LinuxSyscall{{Names: []string{"clone"}, Action: specs.ActAllow,
					Args: []specs.LinuxSeccompArg{{Index: 0, Value: 2114060288, Op: specs.OpMaskedEqual}}}}},
			MaskedPaths: []string{"/proc/kcore"}, ReadonlyPaths: []string{"/proc/sys"},
		},
	}
}

// decodeCase decodes data with unmarshal and with encoding/json into fresh values of the
// type of proto, and fails the test if they disagree on success or on the value.
func decodeAgree(t *testing.T, name string, data []byte, proto any) {
	t.Helper()
	typ := reflect.TypeOf(proto)
	got, want := reflect.New(typ), reflect.New(typ)
	gotErr := unmarshal(data, got.Interface())
	wantErr := json.Unmarshal(data, want.Interface())
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("%s: unmarshal error %v, encoding/json error %v\ninput: %s", name, gotErr, wantErr, data)
	}
	if wantErr == nil && !reflect.DeepEqual(got.Interface(), want.Interface()) {
		t.Fatalf("%s: unmarshal and encoding/json disagree\ninput: %s\nunmarshal:     %+v\nencoding/json: %+v", name, data, got.Elem(), want.Elem())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type withInterface struct {
	Any  any            `json:"any"`
	Map  map[string]any `json:"map"`
	List []any          `json:"list"`
}

type withEmbedded struct {
	Stdio
	Name string `json:"name"`
}

type withStringOption struct {
	N int64 `json:"n,string"`
}

type withRaw struct {
	Raw json.RawMessage `json:"raw"`
	N   int             `json:"n"`
}

type withUnmarshalers struct {
	Time  time.Time            `json:"time"`
	Times []time.Time          `json:"times"`
	Ptr   *time.Time           `json:"ptr"`
	Map   map[string]time.Time `json:"map"`
}

type numbers struct {
	I8  int8    `json:"i8"`
	U16 uint16  `json:"u16"`
	I   int     `json:"i"`
	U   uint64  `json:"u"`
	F32 float32 `json:"f32"`
	F64 float64 `json:"f64"`
	P   *int    `json:"p"`
	B   []byte  `json:"b"`
}

func TestUnmarshalAgreesWithEncodingJSON(t *testing.T) {
	spec := exampleSpec()
	container := mustJSON(t, Container{ID: "c1", Rootfs: "c1/rootfs", Spec: spec, IO: Stdio{Stdio: 3, Stderr: 5}, ConsoleRows: 24, ConsoleCols: 80})
	cases := []struct {
		name  string
		data  string
		proto any
	}{
		{"a container with a full spec", string(container), Container{}},
		{"a pod with entropy (base64)", string(mustJSON(t, Pod{ID: "p", DNS: []string{"1.1.1.1"}, TimeUnixNano: -5, Entropy: []byte{0, 1, 2, 255}})), Pod{}},
		{"keys matched case-insensitively", `{"ID":"c","ROOTFS":"r","io":{"STDIO":4}}`, Container{}},
		{"a later duplicate wins", `{"id":"a","ID":"b","id":"c"}`, Container{}},
		{"unknown keys are skipped", `{"id":"a","extra":{"x":[1,2,{"y":null}]},"more":"s"}`, Container{}},
		{"null leaves values alone or clears pointers", `{"id":null,"spec":null,"io":null,"consoleRows":null}`, Container{}},
		{"an empty array is an empty slice", `{"dns":[],"dnsSearch":null}`, Pod{}},
		{"numbers in range", `{"i8":-128,"u16":65535,"i":-1,"u":18446744073709551615,"f32":1.5e10,"f64":-2.5e-300,"p":7,"b":"AAEC"}`, numbers{}},
		{"int8 overflow", `{"i8":128}`, numbers{}},
		{"negative into uint", `{"u":-1}`, numbers{}},
		{"fraction into int", `{"i":1.5}`, numbers{}},
		{"exponent into int", `{"i":1e3}`, numbers{}},
		{"float32 overflow", `{"f32":1e39}`, numbers{}},
		{"bad base64", `{"b":"!!"}`, numbers{}},
		{"bytes as an array of numbers", `{"b":[1,2,3]}`, numbers{}},
		{"empty bytes", `{"b":""}`, numbers{}},
		{"null bytes", `{"b":null}`, numbers{}},
		{"base64 with an escaped newline", `{"b":"AA\nEC"}`, numbers{}},
		{"base64 with padding", `{"b":"AAE="}`, numbers{}},
		{"base64 without its padding", `{"b":"AAE"}`, numbers{}},
		{"a number into bytes", `{"b":1}`, numbers{}},
		{"string into int", `{"i":"1"}`, numbers{}},
		{"object into string", `{"id":{}}`, Container{}},
		{"array into struct", `{"io":[]}`, Container{}},
		{"interfaces get float64 numbers", `{"any":{"a":[1,2.5,"x",true,null]},"map":{"k":1},"list":[1,{"n":2}]}`, withInterface{}},
		{"embedded struct (encoding/json's rules)", `{"stdio":3,"name":"n"}`, withEmbedded{}},
		{"the string option (encoding/json's rules)", `{"n":"12"}`, withStringOption{}},
		{"json.RawMessage (encoding/json's rules)", `{"raw":{"a":[1]},"n":2}`, withRaw{}},
		{"structs with their own UnmarshalJSON", `{"time":"2023-11-14T22:13:20Z","times":["2023-11-14T22:13:20.5Z"],"ptr":"2001-01-01T00:00:00Z","map":{"a":"2002-02-02T00:00:00Z"}}`, withUnmarshalers{}},
		{"a bad time", `{"time":"yesterday"}`, withUnmarshalers{}},
		{"an envelope", `{"id":7,"data":{"a": [1, "x"]},"error":{"kind":"invalid","message":"m"}}`, envelope{}},
		{"an envelope with null data", `{"id":7,"data":null}`, envelope{}},
		{"invalid JSON", `{"id":"a",}`, Container{}},
		{"trailing data", `{"id":"a"} {}`, Container{}},
		{"not an object", `"x"`, Container{}},
		{"null at the top", `null`, Container{}},
		{"a top-level pointer", `{"id":"a"}`, &Container{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { decodeAgree(t, c.name, []byte(c.data), c.proto) })
	}
}

// The point of unmarshal: a container's spec without Windows, Solaris, VM, z/OS or FreeBSD
// sections makes it learn none of their types (encoding/json builds all 65 of the spec's
// struct types on the first decode).
func TestUnmarshalLearnsOnlyTheTypesInTheData(t *testing.T) {
	var c Container
	if err := unmarshal(mustJSON(t, Container{ID: "c1", Spec: exampleSpec()}), &c); err != nil {
		t.Fatal(err)
	}
	var p Pod
	if err := unmarshal(mustJSON(t, Pod{ID: "p", Entropy: []byte{1, 2, 3}}), &p); err != nil {
		t.Fatal(err)
	}
	typesMu.Lock()
	defer typesMu.Unlock()
	var learned []string
	for typ := range decodes {
		learned = append(learned, typ.String())
	}
	for _, absent := range []any{specs.Windows{}, specs.Solaris{}, specs.VM{}, specs.ZOS{}, specs.FreeBSD{}, specs.LinuxIntelRdt{}} {
		if _, ok := decodes[reflect.TypeOf(absent)]; ok {
			t.Errorf("unmarshal learned %T, which the data does not contain (learned: %s)", absent, strings.Join(learned, ", "))
		}
	}
	if !decodes[reflect.TypeOf([]byte(nil))] {
		t.Errorf("unmarshal did not decode a pod's entropy ([]byte) itself (learned: %s)", strings.Join(learned, ", "))
	}
	if !decodes[reflect.TypeOf(specs.LinuxSeccomp{})] {
		t.Errorf("unmarshal did not decode the spec's seccomp section itself (learned: %s)", strings.Join(learned, ", "))
	}
}

func FuzzUnmarshalAgreesWithEncodingJSON(f *testing.F) {
	f.Add(string(mustJSONf(f, Container{ID: "c1", Rootfs: "c1/rootfs", Spec: exampleSpec(), IO: Stdio{Stdio: 3}})))
	f.Add(string(mustJSONf(f, Pod{ID: "p", Entropy: []byte("entropy")})))
	f.Add(`{"ID":"c","spec":{"process":{"user":{"uid":1e3}}},"io":null}`)
	f.Fuzz(func(t *testing.T, data string) {
		decodeAgree(t, "fuzz", []byte(data), Container{})
		decodeAgree(t, "fuzz", []byte(data), Pod{})
		decodeAgree(t, "fuzz", []byte(data), numbers{})
		decodeAgree(t, "fuzz", []byte(data), envelope{})
	})
}

func mustJSONf(f *testing.F, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		f.Fatal(fmt.Errorf("seed: %w", err))
	}
	return b
}
