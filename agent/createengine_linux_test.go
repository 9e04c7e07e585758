package agent

import (
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/configs"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// An exec into a container the create engine made goes through the exec helper, and one
// the helper does not do is refused with the reason (there is no libcontainer state to
// fall back on).
func TestExecIntoEngineContainer(t *testing.T) {
	a := &Agent{execHelper: execHelperPath}
	c := &container{id: "c1", lc: &engineContainer{id: "c1", cfg: configs.Config{Cgroups: &cgroups.Cgroup{}}}}
	fast, err := a.useExecHelper(c, &convert.Process{Args: []string{"true"}})
	if !fast || err != nil {
		t.Fatalf("a plain exec: helper %v, error %v; want the helper", fast, err)
	}
	fast, err = a.useExecHelper(c, &convert.Process{Args: []string{"true"}, AppArmorProfile: "p"})
	if fast || err == nil || !strings.Contains(err.Error(), `container "c1": the exec helper`) ||
		!strings.Contains(err.Error(), "AppArmor profile") || kindOf(err) != agentproto.KindInvalid {
		t.Fatalf("an exec with an AppArmor profile: helper %v, error %v; want an invalid-request error naming the reason", fast, err)
	}
}
