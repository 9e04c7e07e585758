package agent

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/oci"
)

// guestSpec is what the agent needs to know to turn the host's OCI spec into one that works
// inside the VM.
type guestSpec struct {
	// ContainerID names the container (and its cgroup).
	ContainerID string
	// ShareDir is where the pod share is mounted (agentproto.SharePath).
	ShareDir string
	// Rootfs is the container's root relative to ShareDir.
	Rootfs string
	// SandboxNS maps a namespace type to the guest path of the pod sandbox's namespace
	// (/proc/<pid>/ns/<type>); nil for the pod's first container.
	SandboxNS map[specs.LinuxNamespaceType]string
	// ResolvConf is the guest path of the pod's resolv.conf, "" when STARTPOD had no DNS.
	ResolvConf string
}

// defaultDevMount is runc's default /dev mount.
var defaultDevMount = specs.Mount{
	Destination: "/dev",
	Type:        "tmpfs",
	Source:      "tmpfs",
	Options:     []string{"nosuid", "strictatime", "mode=755", "size=65536k"},
}

// adjustSpec returns a copy of the host's spec adjusted for the guest (the input is not
// modified):
//   - root.path points into the 9p share; relative bind sources are resolved in it;
//   - /dev is always a tmpfs: 9p cannot hold device nodes (QEMU refuses mknod on the share);
//   - no network namespace: the VM is the pod's network namespace, its NIC mirrors the
//     container's host interfaces, so every container runs in the guest's;
//   - a namespace path names a host process's namespace, meaningless here: it joins the pod
//     sandbox's namespace of that type in the guest, or gets a fresh one (first container);
//   - the cgroup path is the agent's own, /runv/<id>: host cgroup paths (including
//     systemd's slice:prefix:name form) mean nothing in the guest's cgroup2 tree;
//   - hooks are dropped: they run on the host;
//   - the pod's resolv.conf is bound read-only when the spec brings none;
//   - a seccomp profile that does not mention statx lets libcontainer's statx(STATX_MNT_ID)
//     through (allowStatxMountID).
func adjustSpec(in *specs.Spec, g guestSpec) (*specs.Spec, error) {
	if in == nil {
		return nil, errorf(agentproto.KindInvalid, "container %q: no OCI spec", g.ContainerID)
	}
	if in.Process == nil || len(in.Process.Args) == 0 {
		return nil, errorf(agentproto.KindInvalid, "container %q: spec has no process args", g.ContainerID)
	}
	spec, err := copySpec(in)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", g.ContainerID, err)
	}

	rootfs, err := inShare(g.ShareDir, g.Rootfs)
	if err != nil {
		return nil, errorf(agentproto.KindInvalid, "container %q: rootfs: %w", g.ContainerID, err)
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = rootfs
	spec.Hooks = nil

	for i, m := range spec.Mounts {
		if oci.IsBindMount(m) && !path.IsAbs(m.Source) {
			src, err := inShare(g.ShareDir, m.Source)
			if err != nil {
				return nil, errorf(agentproto.KindInvalid, "container %q: mount %s: %w", g.ContainerID, m.Destination, err)
			}
			spec.Mounts[i].Source = src
		}
	}
	spec.Mounts = ensureDevTmpfs(spec.Mounts)
	if g.ResolvConf != "" && !hasMount(spec.Mounts, "/etc/resolv.conf") {
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: "/etc/resolv.conf", Type: "bind", Source: g.ResolvConf,
			Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		})
	}

	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	spec.Linux.CgroupsPath = "/runv/" + g.ContainerID
	var nss []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		switch {
		case ns.Type == specs.NetworkNamespace:
			continue
		case ns.Path == "":
		case ns.Type == specs.MountNamespace:
			// Sharing a mount namespace with the sandbox would give this container the
			// sandbox's root; a private one is what a host-side pause container implies.
			ns.Path = ""
		default:
			ns.Path = g.SandboxNS[ns.Type] // "" when this is the first container: fresh
		}
		nss = append(nss, ns)
	}
	spec.Linux.Namespaces = nss
	allowStatxMountID(spec.Linux.Seccomp)
	return spec, nil
}

// copySpec deep-copies a spec: the host's spec is kept as received for UPDATECONTAINER.
func copySpec(in *specs.Spec) (*specs.Spec, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("copy spec: %w", err)
	}
	var out specs.Spec
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("copy spec: %w", err)
	}
	return &out, nil
}

// inShare resolves rel inside the share and refuses anything that would leave it.
func inShare(share, rel string) (string, error) {
	if rel == "" {
		return "", fmt.Errorf("empty path")
	}
	if path.IsAbs(rel) {
		// The host may already send guest paths (SharePath/...): accept those under the share.
		p := path.Clean(rel)
		if p == share || strings.HasPrefix(p, share+"/") {
			return p, nil
		}
		return "", fmt.Errorf("%q is outside the pod share %s", rel, share)
	}
	p := path.Join(share, rel)
	if p != share && !strings.HasPrefix(p, share+"/") {
		return "", fmt.Errorf("%q escapes the pod share", rel)
	}
	return p, nil
}

func hasMount(mounts []specs.Mount, dest string) bool {
	for _, m := range mounts {
		if path.Clean(m.Destination) == dest {
			return true
		}
	}
	return false
}

// ensureDevTmpfs makes /dev a tmpfs mounted before anything under it (/dev/pts, /dev/shm,
// /dev/mqueue must land on it, not under it). A non-tmpfs /dev (a bind of the host's /dev)
// is replaced: the host's device tree is not in the share and 9p cannot hold device nodes.
func ensureDevTmpfs(mounts []specs.Mount) []specs.Mount {
	out := make([]specs.Mount, 0, len(mounts)+1)
	insertAt := -1
	for _, m := range mounts {
		dest := path.Clean(m.Destination)
		if dest == "/dev" {
			if m.Type == "tmpfs" {
				return mounts
			}
			continue // dropped; replaced below
		}
		if insertAt < 0 && strings.HasPrefix(dest, "/dev/") {
			insertAt = len(out)
		}
		out = append(out, m)
	}
	if insertAt < 0 {
		insertAt = len(out)
	}
	out = append(out, specs.Mount{})
	copy(out[insertAt+1:], out[insertAt:])
	dev := defaultDevMount
	dev.Options = append([]string(nil), defaultDevMount.Options...)
	out[insertAt] = dev
	return out
}
