package agent

import (
	"strconv"

	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/runv-project/runv/api/convert"
)

// newProcess converts an OCI process into a libcontainer one, from convert.NewProcess's
// (returned too: what the conversion's code reads). Stdio is wired separately.
func newProcess(p *specs.Process, init bool) (*libcontainer.Process, *convert.Process, error) {
	cp, err := convert.NewProcess(p, init)
	if err != nil {
		return nil, nil, err
	}
	return &libcontainer.Process{
		Args: cp.Args, Env: cp.Env, UID: cp.UID, GID: cp.GID, AdditionalGroups: cp.AdditionalGroups,
		Cwd: cp.Cwd, ConsoleWidth: cp.ConsoleWidth, ConsoleHeight: cp.ConsoleHeight,
		Capabilities: cp.Capabilities, AppArmorProfile: cp.AppArmorProfile, Label: cp.Label,
		NoNewPrivileges: cp.NoNewPrivileges, Rlimits: cp.Rlimits, Init: cp.Init,
		Scheduler: cp.Scheduler, IOPriority: cp.IOPriority, CPUAffinity: cp.CPUAffinity,
		// runc init reads its log level from here (a number, never a name).
		LogLevel: strconv.Itoa(int(logrus.GetLevel())),
	}, cp, nil
}

// convertedInitProcess is the init of a container made from the host's conversion
// (convert.ForGuest, which converted and checked the process): the create engine takes
// everything else from the conversion's request.
func convertedInitProcess(p *specs.Process) *libcontainer.Process {
	lp := &libcontainer.Process{Args: p.Args, Init: true}
	if p.ConsoleSize != nil {
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(p.ConsoleSize.Width), uint16(p.ConsoleSize.Height)
	}
	return lp
}
