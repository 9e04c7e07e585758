package convert

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/ocispec"
)

// GuestSpec is what the agent needs to know to turn the host's OCI spec into one that works
// inside the VM.
type GuestSpec struct {
	// ContainerID names the container (and its cgroup).
	ContainerID string
	// ShareDir is where the pod share is mounted (agentproto.SharePath).
	ShareDir string
	// Rootfs is the container's root relative to ShareDir.
	Rootfs string
	// PodNamespaces are the guest paths of the pod's pinned namespaces (PodShared), by
	// type, for a pod member (agentproto.Container.Member) to join; nil for any other
	// container.
	PodNamespaces map[specs.LinuxNamespaceType]string
	// SharePID: the container asks for the pod's PID namespace (agentproto.Container).
	SharePID bool
	// SandboxPID is the guest path of the PID namespace of the pod's sandbox (its first
	// container), "" when there is none: no sandbox, or its init exited.
	SandboxPID string
	// ResolvConf is the guest path of the pod's resolv.conf, "" when STARTPOD had no DNS.
	ResolvConf string
	// VMDevices lists the VM's device nodes, which a container allowed every device (a
	// privileged one) gets in place of the host's; nil: the spec's devices are kept.
	VMDevices func() ([]specs.LinuxDevice, error)
}

// defaultDevMount is runc's default /dev mount.
var defaultDevMount = specs.Mount{
	Destination: "/dev",
	Type:        "tmpfs",
	Source:      "tmpfs",
	Options:     []string{"nosuid", "strictatime", "mode=755", "size=65536k"},
}

// AdjustSpec adjusts the host's spec for the guest, in place (it is the agent's own, decoded
// from NEWCONTAINER: the spec is decoded once per hop), and returns it:
//   - root.path points into the 9p share; relative bind sources are resolved in it;
//   - /dev is always a tmpfs: 9p cannot hold device nodes (QEMU refuses mknod on the share);
//   - no network namespace: the VM is the pod's network namespace, its NIC mirrors the
//     container's host interfaces, so every container runs in the guest's;
//   - namespaces as guestNamespaces decides: the pod's where the pod shares them;
//   - the cgroup path is the agent's own, /runv/<id>: host cgroup paths (including
//     systemd's slice:prefix:name form) mean nothing in the guest's cgroup2 tree;
//   - hooks are dropped: they run on the host;
//   - the pod's resolv.conf is bound read-only when the spec brings none;
//   - a bind mount's filesystem options (data, e.g. a tmpfs's size=) are dropped: the kernel
//     ignores them for a bind mount, as runc 1.1 lets it; libcontainer 1.2+ refuses them;
//   - a FIFO device's major:minor are zeroed;
//   - a container allowed every device (privileged) gets the VM's devices, not the host's
//     that the spec lists: host device numbers name other devices, or none, in the VM;
//   - in a user namespace, sysfs is a read-only bind of the VM's /sys (see sysfsAsBind);
//   - a seccomp profile that does not mention statx lets libcontainer's statx(STATX_MNT_ID)
//     through (allowStatxMountID).
func AdjustSpec(in *specs.Spec, g GuestSpec) (*specs.Spec, error) {
	if in == nil {
		return nil, Errorf(agentproto.KindInvalid, "container %q: no OCI spec", g.ContainerID)
	}
	if in.Process == nil || len(in.Process.Args) == 0 {
		return nil, Errorf(agentproto.KindInvalid, "container %q: spec has no process args", g.ContainerID)
	}
	spec := in

	rootfs, err := inShare(g.ShareDir, g.Rootfs)
	if err != nil {
		return nil, Errorf(agentproto.KindInvalid, "container %q: rootfs: %w", g.ContainerID, err)
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = rootfs
	spec.Hooks = nil

	for i, m := range spec.Mounts {
		if ocispec.IsBindMount(m) {
			spec.Mounts[i].Options = withoutDataOptions(m.Options)
		}
		if ocispec.IsBindMount(m) && !filepath.IsAbs(m.Source) {
			src, err := inShare(g.ShareDir, m.Source)
			if err != nil {
				return nil, Errorf(agentproto.KindInvalid, "container %q: mount %s: %w", g.ContainerID, m.Destination, err)
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
	nss, err := guestNamespaces(spec.Linux.Namespaces, g)
	if err != nil {
		return nil, err
	}
	spec.Linux.Namespaces = nss
	if hasNamespace(nss, specs.UserNamespace) {
		spec.Mounts = sysfsAsBind(spec.Mounts)
	}
	for i, d := range spec.Linux.Devices {
		// A FIFO has no device numbers (the spec requires them for c and b only); mknod
		// ignores them, and libcontainer then finds 0:0 where the spec said otherwise
		// ("new p device inode ... has incorrect major:minor").
		if d.Type == "p" {
			spec.Linux.Devices[i].Major, spec.Linux.Devices[i].Minor = 0, 0
		}
	}
	if g.VMDevices != nil && allDevicesAllowed(spec.Linux.Resources) {
		devs, err := g.VMDevices()
		if err != nil {
			return nil, fmt.Errorf("container %q is allowed every device (privileged): list the VM's devices: %w", g.ContainerID, err)
		}
		spec.Linux.Devices = devs
	}
	allowStatxMountID(spec.Linux.Seccomp)
	return spec, nil
}

// allDevicesAllowed reports whether the device cgroup rules end up allowing every device
// (rwm on any type and number), what privileged containers get from containerd, docker
// and podman. Later rules override earlier ones, as in runc.
func allDevicesAllowed(r *specs.LinuxResources) bool {
	if r == nil {
		return false
	}
	all := false
	for _, d := range r.Devices {
		if (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil {
			all = d.Allow && strings.ContainsRune(d.Access, 'r') && strings.ContainsRune(d.Access, 'w') && strings.ContainsRune(d.Access, 'm')
		}
	}
	return all
}

// PodShared are the namespace types every container of a pod shares: those of the pod's
// first container (the sandbox), pinned for the life of the VM (pinPodNamespaces), so that
// they outlive it, as Kata keeps its sandbox's. The network namespace is shared too, as the
// VM's own (see guestNamespaces); the PID namespace only on request, and then the live
// sandbox's, since a PID namespace cannot outlive its init.
var PodShared = []specs.LinuxNamespaceType{specs.IPCNamespace, specs.UTSNamespace}

// guestNamespaces decides a container's namespaces in the guest. It is the one place that
// does: the host sends no namespace by path (a host namespace means nothing in the VM),
// only whether the container asks to share the pod's PID namespace.
//   - network: none of its own; the VM's network namespace is the pod's (its NICs mirror
//     the pod's host interfaces);
//   - the pod's first container gets fresh ones of every type it lists (but network):
//     its IPC and UTS namespaces become the pod's; so does a container that only shares
//     the VM, not the pod (containerd's runc shim groups);
//   - a member gets the pod's IPC and UTS namespaces, listed or not (not listing one means
//     the runtime's: for a member, the pod's); the sandbox's PID namespace when it asks to
//     share it (refused once the sandbox's init has exited); fresh mount, user, cgroup and
//     time namespaces when listed (a shared mount namespace would give it the sandbox's
//     root).
func guestNamespaces(in []specs.LinuxNamespace, g GuestSpec) ([]specs.LinuxNamespace, error) {
	member := g.PodNamespaces != nil
	out := make([]specs.LinuxNamespace, 0, len(in)+len(PodShared))
	listed := make(map[specs.LinuxNamespaceType]bool, len(in))
	for _, ns := range in {
		listed[ns.Type] = true
		ns.Path = ""
		switch ns.Type {
		case specs.NetworkNamespace:
			continue
		case specs.IPCNamespace, specs.UTSNamespace:
			ns.Path = g.PodNamespaces[ns.Type]
		case specs.PIDNamespace:
			if g.SharePID && member {
				if g.SandboxPID == "" {
					return nil, Errorf(agentproto.KindState, "container %q shares the pod's PID namespace, whose first container is gone or has exited: a PID namespace ends with its init", g.ContainerID)
				}
				ns.Path = g.SandboxPID
			}
		}
		out = append(out, ns)
	}
	if member {
		for _, t := range PodShared {
			if p := g.PodNamespaces[t]; p != "" && !listed[t] {
				out = append(out, specs.LinuxNamespace{Type: t, Path: p})
			}
		}
	}
	return out, nil
}

// ReadonlyDeviceBinds turns each linux.ReadonlyPaths entry that names a device node, FIFO or
// socket of the rootfs into a read-only bind mount of that file. libcontainer makes a
// readonly path read-only by binding it onto itself, then remounting it with the flags
// statfs(2) reports for it; statfs of such a file on the 9p rootfs makes QEMU open it on
// the host, which fails for a node of no device, or a FIFO without a reader ("can't make
// "/x" read-only: statfs /x: no such device or address"). A bind mount made read-only needs no statfs, and
// gives the same mount. Only nodes that the container sees in its rootfs are converted: no
// mount covers them, and no component of their path is a symlink. rootfs is the rootfs's
// path in the guest, lstat the agent's.
func ReadonlyDeviceBinds(spec *specs.Spec, rootfs string, lstat func(string) (fs.FileInfo, error)) {
	if spec.Linux == nil || len(spec.Linux.ReadonlyPaths) == 0 {
		return
	}
	var keep []string
	for _, p := range spec.Linux.ReadonlyPaths {
		if isRootfsDevice(spec.Mounts, rootfs, p, lstat) {
			spec.Mounts = append(spec.Mounts, specs.Mount{
				Destination: p, Type: "bind", Source: filepath.Join(rootfs, p), Options: []string{"bind", "ro"},
			})
			continue
		}
		keep = append(keep, p)
	}
	spec.Linux.ReadonlyPaths = keep
}

func isRootfsDevice(mounts []specs.Mount, rootfs, p string, lstat func(string) (fs.FileInfo, error)) bool {
	if !filepath.IsAbs(p) || filepath.Clean(p) == "/" {
		return false
	}
	p = filepath.Clean(p)
	for _, m := range mounts {
		d := filepath.Clean(m.Destination)
		if d == "/" || d == p || strings.HasPrefix(p, d+"/") {
			return false
		}
	}
	parts := strings.Split(p[1:], "/")
	cur := rootfs
	for i, part := range parts {
		cur = filepath.Join(cur, part)
		fi, err := lstat(cur)
		if err != nil {
			return false
		}
		if i < len(parts)-1 {
			if !fi.IsDir() {
				return false
			}
			continue
		}
		return fi.Mode()&(fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0
	}
	return false
}

func hasNamespace(nss []specs.LinuxNamespace, t specs.LinuxNamespaceType) bool {
	for _, ns := range nss {
		if ns.Type == t {
			return true
		}
	}
	return false
}

// sysfsAsBind replaces sysfs mounts by recursive binds of the guest's /sys. The kernel
// mounts a sysfs only for a user namespace that owns the network namespace, and a
// container stays in the VM's network namespace (the pod's), which its new user namespace
// does not own (EPERM). A bind of the VM's /sys shows what a sysfs mounted in that network
// namespace would (runc does the same for rootless containers without a network
// namespace); its mountinfo entry is a sysfs's. The mount keeps its flags options.
func sysfsAsBind(mounts []specs.Mount) []specs.Mount {
	for i, m := range mounts {
		if m.Type != "sysfs" {
			continue
		}
		opts := []string{"rbind"}
		for _, o := range m.Options {
			if mountFlagOptions[o] && o != "bind" && o != "rbind" {
				opts = append(opts, o)
			}
		}
		mounts[i] = specs.Mount{Destination: m.Destination, Type: "bind", Source: "/sys", Options: opts}
	}
	return mounts
}

// mountFlagOptions are the mount options libcontainer knows as flags (everything else is
// filesystem data). "defaults" is data to it, and means nothing.
var mountFlagOptions = func() map[string]bool {
	m := map[string]bool{"idmap": true, "ridmap": true}
	for _, o := range specconv.KnownMountOptions() {
		m[o] = o != "defaults"
	}
	return m
}()

// withoutDataOptions returns a bind mount's options without the filesystem-specific ones.
func withoutDataOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		if mountFlagOptions[o] {
			out = append(out, o)
		}
	}
	return out
}

// inShare resolves rel inside the share and refuses anything that would leave it.
func inShare(share, rel string) (string, error) {
	if rel == "" {
		return "", fmt.Errorf("empty path")
	}
	if filepath.IsAbs(rel) {
		// The host may already send guest paths (SharePath/...): accept those under the share.
		p := filepath.Clean(rel)
		if p == share || strings.HasPrefix(p, share+"/") {
			return p, nil
		}
		return "", fmt.Errorf("%q is outside the pod share %s", rel, share)
	}
	p := filepath.Join(share, rel)
	if p != share && !strings.HasPrefix(p, share+"/") {
		return "", fmt.Errorf("%q escapes the pod share", rel)
	}
	return p, nil
}

func hasMount(mounts []specs.Mount, dest string) bool {
	for _, m := range mounts {
		if filepath.Clean(m.Destination) == dest {
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
		dest := filepath.Clean(m.Destination)
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
