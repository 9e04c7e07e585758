package agent

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

func TestReadReport(t *testing.T) {
	rec := func(kind uint32, v int32, text string) []byte {
		b := binary.LittleEndian.AppendUint32(nil, kind)
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(text)))
		return append(b, text...)
	}
	r := bytes.NewReader(append(rec(reportPid, 42, ""), rec(reportError, 2, "setns into the mnt namespace")...))
	if p, err := readReport(r); err != nil || p.kind != reportPid || p.value != 42 {
		t.Fatalf("pid record: %+v %v", p, err)
	}
	e, err := readReport(r)
	if err != nil || e.kind != reportError {
		t.Fatalf("error record: %+v %v", e, err)
	}
	if got := helperError(e, "x").Error(); got != "exec helper: setns into the mnt namespace: no such file or directory" {
		t.Errorf("helperError = %q", got)
	}
	if _, err := readReport(r); err != io.EOF {
		t.Errorf("after the last record: %v, want EOF", err)
	}
	for _, bad := range [][]byte{rec('X', 0, ""), rec(reportError, 1, strings.Repeat("x", maxReport+1)), rec(reportPid, 1, "")[:7]} {
		if _, err := readReport(bytes.NewReader(bad)); err == nil || err == io.EOF {
			t.Errorf("malformed report %x accepted (%v)", bad, err)
		}
	}
}
