package agent

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// libcontainer's process gets the converted fields and the log level runc init reads.
func TestNewProcessForLibcontainer(t *testing.T) {
	lp, cp, err := newProcess(&specs.Process{Args: []string{"sh"}, Cwd: "/w", User: specs.User{UID: 7, GID: 8, AdditionalGids: []uint32{9}}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if lp.LogLevel == "" {
		t.Error("no log level for runc init")
	}
	if lp.Args[0] != "sh" || lp.Cwd != "/w" || lp.UID != 7 || lp.GID != 8 || len(lp.AdditionalGroups) != 1 || !lp.Init {
		t.Errorf("process %+v", lp)
	}
	if cp.UID != 7 || cp.Cwd != "/w" || !cp.Init || cp.NoNewPrivileges != lp.NoNewPrivileges {
		t.Errorf("the conversion's terms: %+v", cp)
	}
}
