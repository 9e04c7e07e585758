package agent

import "testing"

func TestProcStatusParsing(t *testing.T) {
	status := []byte("Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\n" +
		"SigQ:\t0/3868\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n" +
		"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000014002\n")
	if st, ok := statusState(status); !ok || st != 'S' {
		t.Errorf("state %q %v", st, ok)
	}
	if got := sigMask(status, "SigCgt:"); got != 0x14002 {
		t.Errorf("SigCgt %#x", got)
	}
	if got := sigMask(status, "SigIgn:"); got != 0x4 {
		t.Errorf("SigIgn %#x", got)
	}
	if got := sigMask(status, "SigBlk:"); got != 0 {
		t.Errorf("SigBlk %#x", got)
	}
	if got := sigMask([]byte("Name:\tx\n"), "SigCgt:"); got != 0 {
		t.Errorf("missing line %#x", got)
	}
	if _, ok := statusState([]byte("Name:\tx\n")); ok {
		t.Error("state of a status without one")
	}

	if got := statComm([]byte("42 (runc:[2:INIT]) S 1 42 42 0 -1")); got != initComm {
		t.Errorf("comm %q", got)
	}
	if got := statComm([]byte("42 (a) b) R 1")); got != "a) b" {
		t.Errorf("comm with parenthesis %q", got)
	}
	if got := statComm([]byte("garbage")); got != "" {
		t.Errorf("garbage comm %q", got)
	}
}
