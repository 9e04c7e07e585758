package agentproto

import (
	"bytes"
	"encoding/json"
	"testing"
)

// The hand encoders must write exactly what json.Marshal writes, so that the host reads
// the same frames whichever side encoded them.
func TestAppendersMatchJSON(t *testing.T) {
	odd := "a\"b\\c\b\f\n\r\t\x00\x1f\x7f<>&é\u2028\u2029\xff\xc3 end"
	cases := []struct {
		name string
		v    any
	}{
		{"ready", Ready{BootSteps: "main at 0.3552 s, then root 13.1ms, lo 9.6ms"}},
		{"ready, reconnect", Ready{}},
		{"ready, odd steps", Ready{BootSteps: odd}},
		{"version", VersionInfo{Version: Version, Agent: "runv-agent (go1.26)"}},
		{"version, zero", VersionInfo{}},
		{"version, odd agent", VersionInfo{Version: -3, Agent: odd}},
		{"process started", ProcessStarted{Pid: 39}},
		{"container created and started", ProcessStarted{Pid: 39, Started: true}},
		{"process started, negative", ProcessStarted{Pid: -1}},
		{"exit, code only", ProcessExit{Container: "c", Process: "init"}},
		{"exit, killed", ProcessExit{Container: "c", Process: "e1", ExitCode: 137, Signal: 9, OOMKilled: true}},
		{"exit, never ran", ProcessExit{Container: odd, Process: odd, ExitCode: 127, Error: "exec: " + odd}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Marshal(MsgAck, 1, c.v)
			if err != nil {
				t.Fatal(err)
			}
			if want := mustJSON(t, c.v); !bytes.Equal(f.Data, want) {
				t.Fatalf("Marshal: %s\njson.Marshal: %s", f.Data, want)
			}
		})
	}
	envelopes := []ControlFrame{
		{},
		{ID: 7},
		{Data: json.RawMessage(`{"pid":1}`)},
		{ID: 1 << 63, Data: json.RawMessage(`[1,"x",null]`)},
		{ID: 3, Error: &RemoteError{Kind: KindNotFound, Message: "no such container " + odd}},
		{ID: 3, Error: &RemoteError{Message: ""}},
		{Data: json.RawMessage(`null`), Error: &RemoteError{Kind: "k", Message: "m"}},
	}
	for _, f := range envelopes {
		got, err := appendEnvelope(nil, f)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if want := mustJSON(t, envelope{ID: f.ID, Data: f.Data, Error: f.Error}); !bytes.Equal(got, want) {
			t.Errorf("envelope %+v:\n got %s\nwant %s", f, got, want)
		}
	}
}

func TestWriteControlRefusesInvalidData(t *testing.T) {
	var b bytes.Buffer
	if err := WriteControl(&b, ControlFrame{Type: MsgAck, ID: 1, Data: json.RawMessage(`{"a":`)}); err == nil {
		t.Fatal("a frame with invalid JSON data was written")
	}
	if b.Len() != 0 {
		t.Fatalf("%d bytes written for a refused frame", b.Len())
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "a\"b\\c\b\f\n\r\t\x00\x1f\x7f", "<a href='x'>&amp;</a>", "é€😀\u2028\u2029", "\xff\xfe\xc3\xe2\x82", "\ufffd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendJSONString(%q) = %s, json.Marshal: %s", s, got, want)
		}
	})
}
