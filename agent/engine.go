package agent

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
)

// containerEngine is what the agent does with a container after creating it. Two engines
// implement it: libcontainer's *Container (the fallback, and the only one for what the
// create engine does not do: convert.CreateFallback), and the create engine's (createengine_linux.go),
// which makes the container with the C helper instead of re-executing the agent as
// `runc init`. The method set is libcontainer's own, so that its container needs no wrapper.
type containerEngine interface {
	// Start creates the container's init, which waits for Exec to run its program.
	Start(*libcontainer.Process) error
	// Run starts an extra process through libcontainer's `runc init` (the exec path when
	// convert.FastExecFallback rules the exec helper out).
	Run(*libcontainer.Process) error
	// Exec lets the created init exec its program.
	Exec() error
	Status() (libcontainer.Status, error)
	// State carries the init's pid and the cgroup paths.
	State() (*libcontainer.State, error)
	Config() configs.Config
	// Signal signals the init; SIGKILL with a PID namespace that is not the container's own
	// kills every process of its cgroup.
	Signal(os.Signal) error
	// Processes lists the pids of the container's cgroup.
	Processes() ([]int, error)
	Pause() error
	Resume() error
	Stats() (*libcontainer.Stats, error)
	// Set changes the cgroup's resources.
	Set(configs.Config) error
	// Destroy kills what is left and removes the cgroup.
	Destroy() error
}

var _ containerEngine = (*libcontainer.Container)(nil)
