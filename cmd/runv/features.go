package main

import (
	"encoding/json"
	"slices"

	"github.com/opencontainers/runc/libcontainer/capabilities"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/urfave/cli/v2"
)

// Feature annotations runv reports (runc reports org.opencontainers.runc.*).
const (
	annotationRunvVersion           = "io.github.runv-project.runv.version"
	annotationRunvCheckpointEnabled = "io.github.runv-project.runv.checkpoint.enabled"
)

// featuresCommand prints the runtime-spec features document (features.md): what runv
// accepts, truthfully for a container that runs in a VM. The containers are made by the
// guest agent with the same libcontainer (same module version) runv is built against, so
// the mount options, capabilities and seccomp names are libcontainer's lists; what the VM
// or its kernel cannot do is left out. docs/oci-compliance.md explains each entry.
var featuresCommand = &cli.Command{
	Name:  "features",
	Usage: "show the enabled features (runtime-spec features.md JSON)",
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usageError("features", "", "features takes no arguments (got %q)", c.Args().Slice())
		}
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "    ")
		return enc.Encode(runvFeatures())
	},
}

func runvFeatures() features.Features {
	t, f := true, false
	return features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: ociVersion,
		// createContainer and startContainer would have to run inside the VM: not run.
		Hooks:        []string{hookPrestart, hookCreateRuntime, hookPoststart, hookPoststop},
		MountOptions: guestMountOptions(),
		Linux: &features.Linux{
			Namespaces:   guestNamespaces(),
			Capabilities: capabilities.KnownCapabilities(),
			Cgroup: &features.Cgroup{
				// The agent mounts cgroup2 in the guest; no systemd runs there, and the
				// guest kernel has no RDMA controller.
				V1: &f, V2: &t, Systemd: &f, SystemdUser: &f, Rdma: &f,
			},
			Seccomp: &features.Seccomp{
				// The agent is built with libseccomp (tag seccomp); the guest kernel has
				// CONFIG_SECCOMP_FILTER. Which flags the guest's libseccomp and kernel
				// support is not known on the host: supportedFlags is left out.
				Enabled:    &t,
				Actions:    seccomp.KnownActions(),
				Operators:  seccomp.KnownOperators(),
				Archs:      seccomp.KnownArchs(),
				KnownFlags: seccomp.KnownFlags(),
			},
			// The guest kernel is built without LSMs.
			Apparmor:        &features.Apparmor{Enabled: &f},
			Selinux:         &features.Selinux{Enabled: &f},
			IntelRdt:        &features.IntelRdt{Enabled: &f},
			MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &f}},
			NetDevices:      &features.NetDevices{Enabled: &f},
		},
		Annotations: map[string]string{
			annotationRunvVersion:           version,
			annotationRunvCheckpointEnabled: "false",
		},
		// Annotations that change what runv does with a container: they put it in another
		// container's pod (VM).
		PotentiallyUnsafeConfigAnnotations: []string{
			annotationCRISandboxID, annotationCRIContainerType,
			annotationCRIOSandboxID, annotationCRIOContainerTyp,
		},
	}
}

// guestNamespaces is libcontainer's list: every type is created in the guest. "network" is
// accepted but not created (the container's network is the VM's, the pod's, isolated from
// the host); "user" works with its sysfs a bind of the VM's (see agent.sysfsAsBind).
func guestNamespaces() []string {
	return specconv.KnownNamespaces()
}

// guestMountOptions is libcontainer's list less the id-mapping options: the rootfs and bind
// mounts reach the guest over 9p, which cannot be id-mapped.
func guestMountOptions() []string {
	return slices.DeleteFunc(specconv.KnownMountOptions(), func(o string) bool { return o == "idmap" || o == "ridmap" })
}
