package agentproto

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// exampleConverted is a conversion as convert.ForGuest makes it for runc's example spec
// (the values' kinds; the agent does not look into them here).
func exampleConverted() *Converted {
	return &Converted{
		Fields: []byte{1, 0, 0, 0, 42, 255}, Caps: []uint64{0x20000420, 0x20000420, 0, 0x20000420, 0},
		CloneFlags: 0x7c020000, RootPropagation: 0x44000, ReadonlyRoot: true, SetupDev: true, CgroupNS: true,
		CgroupPath: "/c1",
		DeviceRules: []*devices.Rule{
			{Type: devices.WildcardDevice, Major: -1, Minor: -1, Permissions: "rwm"},
			{Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rwm", Allow: true},
			{Type: devices.BlockDevice, Major: 136, Minor: -1, Permissions: "rwm", Allow: true},
		},
		DeviceProgram: []byte{0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95},
	}
}

// handAgree decodes data as STARTPOD's and as NEWCONTAINER's payload with the hand
// decoders and with the generic one (which agrees with encoding/json,
// TestUnmarshalAgreesWithEncodingJSON) and fails the test if they disagree. A
// NEWCONTAINER whose spec the hand decoder kept agrees once its spec is decoded; an error
// of the spec's own types shows there.
func handAgree(t *testing.T, name string, data []byte) {
	t.Helper()
	pf := ControlFrame{Type: MsgStartPod, ID: 1, Data: data}
	gotPod, gotErr := pf.UnmarshalPod()
	var wantPod Pod
	wantErr := pf.Unmarshal(&wantPod)
	if (gotErr == nil) != (wantErr == nil) || wantErr == nil && !reflect.DeepEqual(gotPod, wantPod) {
		t.Fatalf("%s: Pod: hand %+v (error %v), generic %+v (error %v)\ninput: %s", name, gotPod, gotErr, wantPod, wantErr, data)
	}

	// compactJSON, which spares the agent's frames json.Valid, takes valid JSON only.
	if compactJSON(data) && !json.Valid(data) {
		t.Fatalf("%s: compactJSON takes invalid JSON\ninput: %s", name, data)
	}

	var gotEnv, wantEnv envelope
	gotOK := handEnvelope(data, &gotEnv)
	wantErr = unmarshal(data, &wantEnv)
	if gotOK && (wantErr != nil || !reflect.DeepEqual(gotEnv, wantEnv)) {
		t.Fatalf("%s: envelope: hand %+v, generic %+v (error %v)\ninput: %s", name, gotEnv, wantEnv, wantErr, data)
	}

	cf := ControlFrame{Type: MsgNewContainer, ID: 1, Data: data}
	r, gotErr := cf.UnmarshalContainer()
	var want Container
	wantErr = cf.Unmarshal(&want)
	if gotErr != nil {
		if wantErr == nil {
			t.Fatalf("%s: Container: hand error %v, generic none\ninput: %s", name, gotErr, data)
		}
		return
	}
	init := r.InitProcess()
	spec, specErr := r.Spec()
	if wantErr != nil {
		if specErr == nil {
			t.Fatalf("%s: Container: generic error %v, hand none (its spec decoded: %+v)\ninput: %s", name, wantErr, spec, data)
		}
		return
	}
	if specErr != nil {
		t.Fatalf("%s: Container: the kept spec does not decode: %v\ninput: %s", name, specErr, data)
	}
	if !reflect.DeepEqual(r.Container, want) {
		t.Fatalf("%s: Container: hand %+v, generic %+v\ninput: %s", name, r.Container, want, data)
	}
	if want.Spec == nil || want.Spec.Process == nil {
		if init != nil {
			t.Fatalf("%s: Container: hand init process %+v, the spec has none\ninput: %s", name, init, data)
		}
		return
	}
	wp := want.Spec.Process
	if init == nil || !reflect.DeepEqual(init.Args, wp.Args) || init.Terminal != wp.Terminal || !reflect.DeepEqual(init.ConsoleSize, wp.ConsoleSize) {
		t.Fatalf("%s: Container: hand init process %+v, the spec's %+v\ninput: %s", name, init, wp, data)
	}
}

// The frames a host sends to start a pod and its first container take the hand
// decoders, and decode as the generic decoder decodes them.
func TestHandDecodersTakeTheHostsFrames(t *testing.T) {
	runcSpec := specconv.Example()
	runcSpec.Process.ConsoleSize = &specs.Box{Height: 24, Width: 80}
	for _, tc := range []struct {
		name    string
		typ     MsgType
		payload any
	}{
		{"a pod as the pod daemon starts it", MsgStartPod, Pod{ID: "p-bcd697f0b596", Hostname: "bd", TimeUnixNano: 1764984000123456789, Entropy: []byte(strings.Repeat("\x00\x9f\xff", 11))}},
		{"a pod with DNS and a share tag", MsgStartPod, Pod{ID: "p", DNS: []string{"10.0.0.1", "::1"}, DNSSearch: []string{"example.org"}, DNSOptions: []string{"ndots:2"}, ShareTag: "runvshare", TimeUnixNano: -1}},
		{"a pod with a non-ASCII, escaped hostname", MsgStartPod, Pod{ID: "p", Hostname: "h<é>\"\n"}},
		{"runc's example spec, converted, started", MsgNewContainer, Container{ID: "bd", Rootfs: "bd/rootfs", Spec: runcSpec, IO: Stdio{Stdio: 1, Stderr: 2, NoStdin: true}, Start: true, Converted: exampleConverted()}},
		{"a full spec, escapes in its args, a terminal", MsgNewContainer, Container{ID: "c1", Rootfs: "c1/rootfs", Spec: exampleSpec(), IO: Stdio{Stdio: 3}, ConsoleRows: 24, ConsoleCols: 80, SharePID: true, Member: true, Converted: exampleConverted()}},
		{"a conversion with empty lists", MsgNewContainer, Container{ID: "c", Spec: &specs.Spec{Process: &specs.Process{Args: []string{}}}, Converted: &Converted{Fields: []byte{}, DeviceRules: []*devices.Rule{}, DeviceProgram: []byte{}}}},
	} {
		data := mustJSON(t, tc.payload)
		if tc.typ == MsgStartPod && !handPod(data, &Pod{}) || tc.typ == MsgNewContainer && !handContainer(data, &ReceivedContainer{}) {
			t.Errorf("%s: the hand decoder gave up on %s", tc.name, data)
		}
		handAgree(t, tc.name, data)
		envelopeByHand(t, tc.typ, tc.payload)
	}
	envelopeByHand(t, MsgGetVersion, nil)
	// The agent's own payloads on the way are checked as JSON by compactJSON.
	for _, payload := range []any{
		VersionInfo{Version: Version, Agent: "runv-agent (go1.26)"},
		ProcessStarted{Pid: 40, Started: true},
		ProcessExit{Container: "bd", Process: InitProcessID, ExitCode: 137, Signal: 9, Error: "killed \"x\"", OOMKilled: true},
	} {
		if f, err := Marshal(MsgAck, 1, payload); err != nil || !compactJSON(f.Data) {
			t.Errorf("%T: compactJSON refuses %s (%v)", payload, f.Data, err)
		}
	}
}

// envelopeByHand checks that a frame as WriteControl writes it has its envelope decoded
// by hand, and reads back as it was sent.
func envelopeByHand(t *testing.T, typ MsgType, payload any) {
	t.Helper()
	f, err := Marshal(typ, 42, payload)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteControl(&buf, f); err != nil {
		t.Fatal(err)
	}
	var env envelope
	if body := buf.Bytes()[controlHeaderSize:]; !handEnvelope(body, &env) {
		t.Errorf("%s: the hand decoder gave up on the envelope %s", typ, body)
	}
	got, err := ReadControl(&buf)
	if err != nil || got.ID != f.ID || !bytes.Equal(got.Data, f.Data) {
		t.Errorf("%s: read back %+v (error %v), sent %+v", typ, got, err, f)
	}
}

func TestHandDecodersAsTheGenericOne(t *testing.T) {
	full := string(mustJSON(t, Container{ID: "c1", Rootfs: "c1/rootfs", Spec: exampleSpec(), IO: Stdio{Stdio: 3}, Converted: exampleConverted()}))
	conv := string(mustJSON(t, exampleConverted()))
	withSpec := func(spec string) string { return `{"id":"c","spec":` + spec + `,"converted":` + conv + `}` }
	cases := []struct{ name, data string }{
		{"a full container", full},
		{"no conversion: the generic decoder's", string(mustJSON(t, Container{ID: "c1", Spec: exampleSpec()}))},
		{"whitespace", strings.Replace(full, ":", ": ", 3)},
		{"a key in another case", strings.Replace(full, `"rootfs"`, `"ROOTFS"`, 1)},
		{"a duplicate key", `{"id":"a","id":"b","spec":{"process":{"args":["x"]}},"converted":` + conv + `}`},
		{"a duplicate process", withSpec(`{"process":{"args":["x"]},"process":{"cwd":"/"}}`)},
		{"a process key in another case", withSpec(`{"process":{"args":["x"]},"Process":{"args":["y"]}}`)},
		{"an escaped process key", withSpec(`{"pro\u0063ess":{"args":["x"]}}`)},
		{"args in another case", withSpec(`{"process":{"args":["x"],"ARGS":["y"]}}`)},
		{"a console size key in another case", withSpec(`{"process":{"args":["x"],"consoleSize":{"height":1,"Width":2}}}`)},
		{"a console size with more keys", withSpec(`{"process":{"args":["x"],"consoleSize":{"height":1,"width":2,"depth":[3]}}}`)},
		{"a null process", withSpec(`{"process":null}`)},
		{"no process", withSpec(`{"hostname":"h"}`)},
		{"a process that is not an object", withSpec(`{"process":[]}`)},
		{"args that are not strings", withSpec(`{"process":{"args":[1]}}`)},
		{"a null spec", withSpec(`null`)},
		{"a spec that does not fit its types", withSpec(`{"process":{"args":["x"]},"linux":{"resources":"x"}}`)},
		{"a spec with every kind of value", withSpec(`{"process":{"args":["x"],"env":["A=\u00e9\t\"\\/"]},"annotations":{"k":"v"},"x":[true,false,null,0,-0,1.5e-3,-2E+10,{}],"y":{"z":[[]]}}`)},
		{"a spec with a bad number", withSpec(`{"process":{"args":["x"]},"x":01}`)},
		{"a spec with a bad escape", withSpec(`{"process":{"args":["x"]},"x":"\q"}`)},
		{"a spec with a control character", withSpec("{\"process\":{\"args\":[\"x\"]},\"x\":\"\x01\"}")},
		{"a spec cut short", `{"id":"c","converted":` + conv + `,"spec":{"process":{"args":["x"]`},
		{"deep nesting", withSpec(`{"process":{"args":["x"]},"x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`)},
		{"a null conversion", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":null}`},
		{"a null field", strings.Replace(full, `"rootfs":"c1/rootfs"`, `"rootfs":null`, 1)},
		{"an unknown key", strings.Replace(full, `"id":`, `"extra":1,"id":`, 1)},
		{"console rows out of range", strings.Replace(full, `"id":`, `"consoleRows":65536,"id":`, 1)},
		{"clone flags out of range", strings.Replace(conv, `"cloneFlags":`, `"cloneFlags":4294967296,"x":`, 1)},
		{"a device type out of range", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"deviceRules":[{"type":2147483648}]}}`},
		{"device numbers at their limits", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"deviceRules":[{"type":-2147483648,"major":-9223372036854775808,"minor":9223372036854775807}]}}`},
		{"a device number out of range", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"deviceRules":[{"major":-9223372036854775809}]}}`},
		{"a null device rule", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"deviceRules":[null]}}`},
		{"caps at the limit and beyond", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"caps":[18446744073709551615,18446744073709551616]}}`},
		{"a leading zero", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"cloneFlags":01}}`},
		{"minus zero", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"deviceRules":[{"major":-0}]}}`},
		{"a fraction", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"cloneFlags":1.0}}`},
		{"bad base64", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"!!"}}`},
		{"base64 padded", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"AAE=","deviceProgram":"AA=="}}`},
		{"base64 padded inside", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"AA=A"}}`},
		{"base64 padded too much", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"A==="}}`},
		{"base64 padding then more", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"AA==AAAA"}}`},
		{"base64 unpadded", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"AAE"}}`},
		{"base64 with trailing bits", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"AAF=","deviceProgram":"AB=="}}`},
		{"escaped base64", `{"id":"c","spec":{"process":{"args":["x"]}},"converted":{"fields":"AA\u003d\u003d"}}`},
		{"trailing data", full + ` `},
		{"a second value", full + `{}`},
		{"a pod", string(mustJSON(t, Pod{ID: "p", DNS: []string{"d"}, TimeUnixNano: -9223372036854775808, Entropy: []byte{0, 1, 2, 255}}))},
		{"a pod with a time out of range", `{"id":"p","timeUnixNano":9223372036854775808}`},
		{"a pod with a duplicate key", `{"id":"p","id":"q"}`},
		{"a pod with null DNS", `{"id":"p","dns":null}`},
		{"a pod with empty DNS", `{"id":"p","dns":[]}`},
		{"a pod with an invalid UTF-8 id", "{\"id\":\"p\xff\"}"},
		{"an envelope", `{"id":7,"data":{"id":"c","spec":{"process":{"args":["x"]}}}}`},
		{"an envelope with an error", `{"id":7,"error":{"kind":"invalid","message":"m \u00e9"}}`},
		{"an envelope with null data", `{"id":7,"data":null}`},
		{"an envelope with a null error", `{"id":7,"error":null}`},
		{"an envelope with the largest id", `{"id":18446744073709551615}`},
		{"an envelope with an id out of range", `{"id":18446744073709551616}`},
		{"an envelope with a duplicate id", `{"id":1,"id":2}`},
		{"an envelope with data in another case", `{"id":1,"DATA":2}`},
		{"an empty object", `{}`},
		{"nothing", ``},
		{"not an object", `[]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { handAgree(t, c.name, []byte(c.data)) })
	}
}

func FuzzHandDecoders(f *testing.F) {
	f.Add(string(mustJSONf(f, Container{ID: "bd", Rootfs: "bd/rootfs", Spec: specconv.Example(), IO: Stdio{Stdio: 1, Stderr: 2}, Start: true, Converted: exampleConverted()})))
	f.Add(string(mustJSONf(f, Container{ID: "c1", Spec: exampleSpec(), Converted: exampleConverted()})))
	f.Add(string(mustJSONf(f, Pod{ID: "p", Hostname: "h", DNS: []string{"d"}, TimeUnixNano: 5, Entropy: []byte("entropy")})))
	f.Add(`{"id":"c","spec":{"process":{"args":["x"],"consoleSize":{"height":1,"width":2}}},"converted":{"deviceRules":[{"type":99}]}}`)
	f.Fuzz(func(t *testing.T, data string) { handAgree(t, "fuzz", []byte(data)) })
}

// A kept spec is decoded once: its value stays. Without the host's conversion, the spec
// is decoded with the frame.
func TestReceivedContainerSpecOnce(t *testing.T) {
	plain, err := Marshal(MsgNewContainer, 1, Container{ID: "c", Spec: specconv.Example()})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := plain.UnmarshalContainer(); err != nil || r.Container.Spec == nil || r.InitProcess() != r.Container.Spec.Process {
		t.Fatalf("a container without the host's conversion: %+v (error %v), its spec not decoded with the frame", r, err)
	}
	f, err := Marshal(MsgNewContainer, 1, Container{ID: "c", Spec: specconv.Example(), Converted: exampleConverted()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.UnmarshalContainer()
	if err != nil {
		t.Fatal(err)
	}
	if r.Container.Spec != nil {
		t.Fatal("the spec was decoded with the frame")
	}
	s1, err := r.Spec()
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := r.Spec()
	if s1 != s2 || s1.Process == nil || !reflect.DeepEqual(s1.Process.Args, []string{"sh"}) {
		t.Fatalf("Spec: %p then %p, %+v", s1, s2, s1.Process)
	}
}
