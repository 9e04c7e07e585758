package shim

import (
	"errors"
	"fmt"

	"github.com/opencontainers/cgroups"
	_ "github.com/opencontainers/cgroups/devices" // the devices controller, as runc has it
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
)

// Cgroup is the host cgroup of a container's stand-ins: the one runc would have put the
// container in (cgroupsPath, or runc's default for the id), with the config's resources
// written to it. The container's processes are limited in the VM; here the settings are
// what host tools read for the container, and they bound its shims.
type Cgroup struct {
	// Paths are the cgroup's directories by controller, as the cgroup manager reports
	// them (recorded in the container's state to update and remove it later).
	Paths map[string]string `json:"paths"`
	// Systemd: the cgroup is a systemd unit (--systemd-cgroup).
	Systemd bool `json:"systemd,omitempty"`
}

func config(id string, spec *specs.Spec, systemd bool) (*cgroups.Cgroup, error) {
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: id, UseSystemdCgroup: systemd, Spec: spec}, specconv.AllowedDevices)
	if err != nil {
		return nil, fmt.Errorf("linux.cgroupsPath/resources of container %q: %v: %w", id, err, errdefs.ErrInvalidArgument)
	}
	return cg, nil
}

// CreateCgroup makes the container's host cgroup with pid (its init's stand-in) in it and
// the config's resources set. On failure nothing is left.
func CreateCgroup(id string, spec *specs.Spec, systemd bool, pid int) (*Cgroup, error) {
	cg, err := config(id, spec, systemd)
	if err != nil {
		return nil, err
	}
	m, err := manager.New(cg)
	if err != nil {
		return nil, fmt.Errorf("host cgroup of container %q: %w", id, err)
	}
	// Made empty and set up before pid joins, so that a failure can remove it.
	if err := m.Apply(-1); err != nil {
		return nil, errors.Join(fmt.Errorf("host cgroup of container %q: %w", id, err), m.Destroy())
	}
	if err := m.Set(cg.Resources); err != nil {
		return nil, errors.Join(fmt.Errorf("host cgroup of container %q: set resources: %w", id, err), m.Destroy())
	}
	c := &Cgroup{Paths: m.GetPaths(), Systemd: systemd}
	if err := c.Add(pid); err != nil {
		return nil, errors.Join(err, m.Destroy())
	}
	return c, nil
}

// Add puts pid (an exec'd process's stand-in) into the container's host cgroup, as runc's
// exec does.
func (c *Cgroup) Add(pid int) error {
	if c == nil {
		return nil
	}
	for ctrl, dir := range c.Paths {
		if err := cgroups.WriteCgroupProc(dir, pid); err != nil {
			return fmt.Errorf("add pid %d to host cgroup %s (%s): %w", pid, dir, ctrl, err)
		}
	}
	return nil
}

func (c *Cgroup) manager(id string, spec *specs.Spec) (cgroups.Manager, *cgroups.Cgroup, error) {
	cg, err := config(id, spec, c.Systemd)
	if err != nil {
		return nil, nil, err
	}
	m, err := manager.NewWithPaths(cg, c.Paths)
	if err != nil {
		return nil, nil, fmt.Errorf("host cgroup of container %q: %w", id, err)
	}
	return m, cg, nil
}

// Update writes the resources of spec (the container's config after an update) to the
// host cgroup. Devices are not updated, as with runc.
func (c *Cgroup) Update(id string, spec *specs.Spec) error {
	if c == nil {
		return nil
	}
	m, cg, err := c.manager(id, spec)
	if err != nil {
		return err
	}
	cg.Resources.SkipDevices = true
	if err := m.Set(cg.Resources); err != nil {
		return fmt.Errorf("host cgroup of container %q: set resources: %w", id, err)
	}
	return nil
}

// Destroy removes the host cgroup (its stand-ins must be gone).
func (c *Cgroup) Destroy(id string, spec *specs.Spec) error {
	if c == nil {
		return nil
	}
	m, _, err := c.manager(id, spec)
	if err != nil {
		return err
	}
	if err := m.Destroy(); err != nil {
		return fmt.Errorf("remove host cgroup of container %q: %w", id, err)
	}
	return nil
}
