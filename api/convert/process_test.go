package convert

import (
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

func TestNewProcess(t *testing.T) {
	p := &specs.Process{
		Args: []string{"sh"}, Env: []string{"A=1"},
		User:            specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{5, 6}},
		Capabilities:    &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}},
		Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 512}},
		ConsoleSize:     &specs.Box{Height: 25, Width: 80},
		NoNewPrivileges: true,
	}
	lp, err := NewProcess(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if lp.Cwd != "/" {
		t.Errorf("cwd %q, want / by default", lp.Cwd)
	}
	if lp.UID != 1000 || lp.GID != 1001 || len(lp.AdditionalGroups) != 2 || !lp.Init {
		t.Errorf("ids %+v", lp)
	}
	if len(lp.Rlimits) != 1 || lp.Rlimits[0].Type != unix.RLIMIT_NOFILE || lp.Rlimits[0].Soft != 512 {
		t.Errorf("rlimits %+v", lp.Rlimits)
	}
	if lp.Capabilities == nil || lp.Capabilities.Bounding[0] != "CAP_KILL" || !*lp.NoNewPrivileges {
		t.Errorf("caps %+v", lp.Capabilities)
	}
	if lp.ConsoleHeight != 25 || lp.ConsoleWidth != 80 {
		t.Errorf("console %dx%d", lp.ConsoleHeight, lp.ConsoleWidth)
	}
	p.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_BOGUS"}}
	if _, err := NewProcess(p, false); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("bogus rlimit: %v", err)
	}
	if _, err := NewProcess(&specs.Process{}, false); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("no args: %v", err)
	}
}

func TestSplitLateRlimits(t *testing.T) {
	in := []configs.Rlimit{{Type: unix.RLIMIT_AS, Hard: 2 << 30, Soft: 1 << 30}, {Type: unix.RLIMIT_NOFILE, Hard: 10, Soft: 5}}
	lc, late := SplitLateRlimits(in)
	unlimited := configs.Rlimit{Type: unix.RLIMIT_AS, Hard: unix.RLIM_INFINITY, Soft: unix.RLIM_INFINITY}
	if len(lc) != 2 || lc[0] != unlimited || lc[1] != in[1] {
		t.Errorf("for libcontainer %+v", lc)
	}
	if len(late) != 1 || late[0] != in[0] {
		t.Errorf("late %+v", late)
	}
	if lc, late := SplitLateRlimits(nil); lc != nil || late != nil {
		t.Errorf("nil: %v %v", lc, late)
	}
}
