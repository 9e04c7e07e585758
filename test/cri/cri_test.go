//go:build integration

package cri

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/runv-project/runv/test/nettest"
	"github.com/runv-project/runv/test/poll"
)

// callTimeout bounds one CRI call: a runv sandbox boots a VM, under TCG on a loaded machine.
const callTimeout = 3 * time.Minute

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return c
}

var podSeq atomic.Int64

// pod is one test pod of one handler.
type pod struct {
	t       *testing.T
	handler string
	id      string
	cfg     *rt.PodSandboxConfig
}

// runPod starts a pod with the handler; tweak adjusts its config. The pod is stopped and
// removed after the test, which then checks that nothing of it is left on the host.
func runPod(t *testing.T, handler string, tweak func(*rt.PodSandboxConfig)) *pod {
	t.Helper()
	name := fmt.Sprintf("%s-%s-%d", strings.Trim(nameRE.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-"), handler, podSeq.Add(1))
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	cfg := &rt.PodSandboxConfig{
		Metadata:     &rt.PodSandboxMetadata{Name: name, Namespace: "default", Uid: fmt.Sprintf("uid-%d-%d", os.Getpid(), podSeq.Load())},
		Hostname:     "pod",
		LogDirectory: filepath.Join(work, "logs", name),
		Linux:        &rt.LinuxPodSandboxConfig{CgroupParent: cgroupRoot + "/" + name},
	}
	if tweak != nil {
		tweak(cfg)
	}
	os.MkdirAll(cfg.LogDirectory, 0o755)
	if pooled(handler) {
		waitPoolFull(t) // the pod takes the pooled route, not the fallback's cold boot
	}
	r, err := runtimeSvc.RunPodSandbox(ctx(t), &rt.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox (handler %s): %v%s", handler, err, logTail())
	}
	p := &pod{t: t, handler: handler, id: r.PodSandboxId, cfg: cfg}
	t.Cleanup(p.remove)
	return p
}

// remove stops and removes the pod and checks that nothing of it is left.
func (p *pod) remove() {
	c, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := runtimeSvc.StopPodSandbox(c, &rt.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		p.t.Errorf("StopPodSandbox: %v", err)
	}
	if _, err := runtimeSvc.RemovePodSandbox(c, &rt.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		p.t.Errorf("RemovePodSandbox: %v", err)
	}
	var left []string
	waitFor(60*time.Second, func() bool {
		left = p.processes("")
		return len(left) == 0
	})
	if len(left) > 0 {
		p.t.Errorf("processes left after the pod was removed: %v", left)
	}
	if runvShim(p.handler) {
		// A pooled VM's command line does not name its pod: its cgroup does.
		if !waitFor(60*time.Second, func() bool { left = p.vms(); return len(left) == 0 }) {
			p.t.Errorf("VMs left in the pod's cgroup after the pod was removed: %v", left)
		}
	}
	// The suite runs one pod at a time: no pod directory may remain.
	switch {
	case runvShim(p.handler):
		if dirs, _ := filepath.Glob(filepath.Join(shimRoot, "@shim", "*")); len(dirs) > 0 {
			p.t.Errorf("pod directories left: %v", dirs)
		}
	case p.handler == "runvrunc":
		// runv's state under the runc shim's root: no container and no pod.
		left, _ := filepath.Glob(filepath.Join(work, "runvrunc", "*", "*"))
		var dirs []string
		for _, d := range left {
			if filepath.Base(d) == "@pods" {
				pods, _ := filepath.Glob(filepath.Join(d, "*"))
				dirs = append(dirs, pods...)
				continue
			}
			dirs = append(dirs, d)
		}
		if len(dirs) > 0 {
			p.t.Errorf("runv state left under the runc shim's root: %v", dirs)
		}
	}
}

// processes lists the host processes serving the pod (shims, VMs) whose command line
// contains what ("" for any).
func (p *pod) processes(what string) []string {
	var out []string
	for _, l := range leftovers() {
		if strings.Contains(l, p.id) && strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return out
}

// vms lists the pids of the suite's QEMU processes in the pod's memory cgroup.
func (p *pod) vms() []string {
	var out []string
	for _, l := range suiteProcesses() {
		pid, cmd, _ := strings.Cut(l, " ")
		if !strings.Contains(cmd, "qemu-system") {
			continue
		}
		cg, _ := os.ReadFile("/proc/" + pid + "/cgroup")
		for _, line := range strings.Split(string(cg), "\n") {
			if f := strings.SplitN(line, ":", 3); len(f) == 3 && f[1] == "memory" && f[2] == p.cfg.Linux.CgroupParent {
				out = append(out, pid)
			}
		}
	}
	return out
}

// container creates and starts a container running args (busybox); tweak adjusts its
// config. It returns the container's id.
func (p *pod) container(name string, tweak func(*rt.ContainerConfig), args ...string) string {
	p.t.Helper()
	cfg := &rt.ContainerConfig{
		Metadata: &rt.ContainerMetadata{Name: name},
		Image:    &rt.ImageSpec{Image: busybox},
		Command:  args,
		LogPath:  name + ".log",
		Linux:    &rt.LinuxContainerConfig{SecurityContext: &rt.LinuxContainerSecurityContext{}},
	}
	if tweak != nil {
		tweak(cfg)
	}
	c, err := runtimeSvc.CreateContainer(ctx(p.t), &rt.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.cfg})
	if err != nil {
		p.t.Fatalf("CreateContainer %s (handler %s): %v%s", name, p.handler, err, logTail())
	}
	if _, err := runtimeSvc.StartContainer(ctx(p.t), &rt.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		p.t.Fatalf("StartContainer %s (handler %s): %v%s", name, p.handler, err, logTail())
	}
	return c.ContainerId
}

// exec runs a command in a container (ExecSync).
func (p *pod) exec(id string, cmd ...string) *rt.ExecSyncResponse {
	p.t.Helper()
	r, err := runtimeSvc.ExecSync(ctx(p.t), &rt.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 120})
	if err != nil {
		p.t.Fatalf("ExecSync %q (handler %s): %v%s", cmd, p.handler, err, logTail())
	}
	return r
}

// out runs a command that must succeed and returns its trimmed stdout.
func (p *pod) out(id string, cmd ...string) string {
	p.t.Helper()
	r := p.exec(id, cmd...)
	if r.ExitCode != 0 {
		p.t.Fatalf("%q (handler %s) exited %d: stdout %q stderr %q", cmd, p.handler, r.ExitCode, r.Stdout, r.Stderr)
	}
	return strings.TrimSpace(string(r.Stdout))
}

func (p *pod) status(id string) *rt.ContainerStatus {
	p.t.Helper()
	r, err := runtimeSvc.ContainerStatus(ctx(p.t), &rt.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		p.t.Fatalf("ContainerStatus: %v", err)
	}
	return r.Status
}

// waitExited waits for a container to exit and returns its status.
func (p *pod) waitExited(id string) *rt.ContainerStatus {
	p.t.Helper()
	var st *rt.ContainerStatus
	if !waitFor(callTimeout, func() bool {
		st = p.status(id)
		return st.State == rt.ContainerState_CONTAINER_EXITED
	}) {
		p.t.Fatalf("container %s (handler %s) still %v after %s", id, p.handler, st.State, callTimeout)
	}
	return st
}

// waitFor polls cond every 200 ms until it holds or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	return poll.Until(timeout, 200*time.Millisecond, cond)
}

// logTail is the end of containerd's log, for failures.
func logTail() string {
	b, _ := os.ReadFile(ctrdLog)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "\n--- containerd log (tail):\n    " + strings.Join(lines, "\n    ")
}

// criCase is one CRI behaviour, run with every handler on the same pod specs.
type criCase struct {
	name string
	run  func(t *testing.T, handler string)
	// runvDiffers is set for a case that runv cannot pass, with the reason (docs/kubernetes.md).
	runvDiffers string
	// runcShimDiffers is set for a case that runv under containerd's runc shim (handler
	// runvrunc, BinaryName=runv) cannot pass, with the reason (docs/kubernetes.md).
	runcShimDiffers string
}

func TestCRI(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Every case also runs with runv under containerd's runc shim, the route
			// without runv's own shim, which must keep working.
			for _, h := range append(handlers[:len(handlers):len(handlers)], "runvrunc") {
				t.Run(h, func(t *testing.T) {
					if h != "runc" && c.runvDiffers != "" {
						t.Skipf("differs from runc (docs/kubernetes.md): %s", c.runvDiffers)
					}
					if h == "runvrunc" && c.runcShimDiffers != "" {
						t.Skipf("differs under containerd's runc shim (docs/kubernetes.md): %s", c.runcShimDiffers)
					}
					c.run(t, h)
				})
			}
		})
	}
}

var hostRelease = func() string {
	out, _ := exec.Command("uname", "-r").Output()
	return strings.TrimSpace(string(out))
}()

var cases = []criCase{
	{name: "lifecycle and ExecSync", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("main", nil, "sleep", "1000")
		if st := p.status(c); st.State != rt.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("container is %v, want RUNNING", st.State)
		}
		r := p.exec(c, "sh", "-c", "echo out; echo err >&2; exit 3")
		if r.ExitCode != 3 || string(r.Stdout) != "out\n" || string(r.Stderr) != "err\n" {
			t.Errorf("ExecSync: exit %d stdout %q stderr %q, want 3 \"out\\n\" \"err\\n\"", r.ExitCode, r.Stdout, r.Stderr)
		}
		kernel := p.out(c, "uname", "-r")
		if (h != "runc") == (kernel == hostRelease) {
			t.Errorf("uname -r in the container: %s (host %s)", kernel, hostRelease)
		}
	}},
	{name: "exit code and reason", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		failed := p.container("failed", nil, "sh", "-c", "exit 7")
		done := p.container("done", nil, "true")
		if st := p.waitExited(failed); st.ExitCode != 7 || st.Reason != "Error" {
			t.Errorf("exit 7: status exit code %d reason %q, want 7 Error", st.ExitCode, st.Reason)
		}
		if st := p.waitExited(done); st.ExitCode != 0 || st.Reason != "Completed" {
			t.Errorf("true: status exit code %d reason %q, want 0 Completed", st.ExitCode, st.Reason)
		}
	}},
	{name: "container log in CRI format", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("logger", nil, "sh", "-c", "echo hello; echo oops >&2")
		p.waitExited(c)
		path := filepath.Join(p.cfg.LogDirectory, "logger.log")
		var log string
		waitFor(10*time.Second, func() bool {
			b, _ := os.ReadFile(path)
			log = string(b)
			return strings.Contains(log, " stdout F hello\n") && strings.Contains(log, " stderr F oops\n")
		})
		if !strings.Contains(log, " stdout F hello\n") || !strings.Contains(log, " stderr F oops\n") {
			t.Errorf("log %s: %q, want CRI lines \"... stdout F hello\" and \"... stderr F oops\"", path, log)
		}
	}},
	{name: "two containers share network, IPC and UTS", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		a := p.container("a", nil, "sleep", "1000")
		b := p.container("b", nil, "sleep", "1000")
		for _, ns := range []string{"net", "ipc", "uts"} {
			if x, y := p.out(a, "readlink", "/proc/self/ns/"+ns), p.out(b, "readlink", "/proc/self/ns/"+ns); x != y {
				t.Errorf("%s namespace: %s in a, %s in b", ns, x, y)
			}
		}
		if x, y := p.out(a, "readlink", "/proc/self/ns/mnt"), p.out(b, "readlink", "/proc/self/ns/mnt"); x == y {
			t.Errorf("both containers have mount namespace %s", x)
		}
		if runvShim(h) {
			// One pod: one shim process and one VM, and the VM is charged to the pod: QEMU
			// (all its threads) is in the pod's cgroup. A pooled VM was launched before the
			// pod existed: it is found by its cgroup.
			shims, vms := p.processes("containerd-shim-runv-v2"), p.vms()
			if len(shims) != 1 || len(vms) != 1 {
				t.Fatalf("want one shim and one VM in the pod's cgroup, have %d shims %v and %d VMs %v", len(shims), shims, len(vms), vms)
			}
			pid := vms[0]
			cg, _ := os.ReadFile("/proc/" + pid + "/cgroup")
			for _, l := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
				if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "" && f[2] != p.cfg.Linux.CgroupParent {
					t.Errorf("QEMU (pid %s) is in cgroup %q (%s), want the pod's %s", pid, f[2], l, p.cfg.Linux.CgroupParent)
				}
			}
			// cgroup v1 lists threads in tasks (v2 moves whole processes: nothing to check).
			tasks, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", p.cfg.Linux.CgroupParent, "tasks"))
			threads, _ := filepath.Glob("/proc/" + pid + "/task/*")
			for _, th := range threads {
				if err == nil && !strings.Contains("\n"+string(tasks), "\n"+filepath.Base(th)+"\n") {
					t.Errorf("QEMU thread %s is not in the pod's memory cgroup", filepath.Base(th))
				}
			}
		}
	}},
	{name: "hostname and DNS config", run: func(t *testing.T, h string) {
		p := runPod(t, h, func(c *rt.PodSandboxConfig) {
			c.Hostname = "cri-host"
			c.DnsConfig = &rt.DNSConfig{Servers: []string{"10.89.0.53"}, Searches: []string{"example.test"}, Options: []string{"ndots:2"}}
		})
		c := p.container("main", nil, "sleep", "1000")
		if got := p.out(c, "hostname"); got != "cri-host" {
			t.Errorf("hostname %q, want cri-host", got)
		}
		conf := p.out(c, "cat", "/etc/resolv.conf")
		for _, want := range []string{"nameserver 10.89.0.53", "search example.test", "options ndots:2"} {
			if !strings.Contains(conf, want) {
				t.Errorf("/etc/resolv.conf lacks %q:\n%s", want, conf)
			}
		}
	}},
	{name: "sysctls", run: func(t *testing.T, h string) {
		p := runPod(t, h, func(c *rt.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "80"}
		})
		c := p.container("main", nil, "sleep", "1000")
		if got := p.out(c, "cat", "/proc/sys/kernel/shm_rmid_forced"); got != "1" {
			t.Errorf("kernel.shm_rmid_forced = %s, want 1", got)
		}
		if got := p.out(c, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"); got != "80" {
			t.Errorf("net.ipv4.ip_unprivileged_port_start = %s, want 80", got)
		}
	}},
	{name: "security context", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("main", func(c *rt.ContainerConfig) {
			sc := c.Linux.SecurityContext
			sc.RunAsUser = &rt.Int64Value{Value: 1000}
			sc.RunAsGroup = &rt.Int64Value{Value: 2000}
			sc.SupplementalGroups = []int64{3000}
			sc.ReadonlyRootfs = true
			sc.NoNewPrivs = true
			sc.Capabilities = &rt.Capability{DropCapabilities: []string{"ALL"}}
			sc.MaskedPaths = []string{"/proc/kcore"}
			sc.ReadonlyPaths = []string{"/proc/sys"}
		}, "sleep", "1000")
		if got := p.out(c, "id"); !strings.Contains(got, "uid=1000") || !strings.Contains(got, "gid=2000") || !strings.Contains(got, "3000") {
			t.Errorf("id: %s, want uid=1000 gid=2000 and group 3000", got)
		}
		if r := p.exec(c, "touch", "/rootfs-write"); r.ExitCode == 0 {
			t.Errorf("wrote to a read-only rootfs")
		}
		status := p.out(c, "cat", "/proc/self/status")
		for _, want := range []string{"NoNewPrivs:\t1", "CapEff:\t0000000000000000"} {
			if !strings.Contains(status, want) {
				t.Errorf("/proc/self/status lacks %q", want)
			}
		}
		if r := p.exec(c, "sh", "-c", "head -c1 /proc/kcore | wc -c"); strings.TrimSpace(string(r.Stdout)) != "0" {
			t.Errorf("masked /proc/kcore readable: %q", r.Stdout)
		}
		if r := p.exec(c, "sh", "-c", "echo 1 > /proc/sys/kernel/shm_rmid_forced"); r.ExitCode == 0 {
			t.Errorf("wrote to read-only /proc/sys")
		}
	}},
	{name: "OOM kill reason OOMKilled", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("hog", func(c *rt.ContainerConfig) {
			c.Linux.Resources = &rt.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
		}, "sh", "-c", "a=0123456789abcdef; while true; do a=$a$a; done")
		if st := p.waitExited(c); st.ExitCode != 137 || st.Reason != "OOMKilled" {
			t.Errorf("exit code %d reason %q, want 137 OOMKilled", st.ExitCode, st.Reason)
		}
	}},
	{name: "read-only volume leaves its submounts writable", run: func(t *testing.T, h string) {
		// CRI's default for a read-only volume (recursive_read_only off): "rbind", "ro".
		src := t.TempDir()
		sub := filepath.Join(src, "tmpfs")
		os.Mkdir(sub, 0o755)
		if err := syscall.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Unmount(sub, syscall.MNT_DETACH) })
		p := runPod(t, h, nil)
		c := p.container("main", func(c *rt.ContainerConfig) {
			c.Mounts = []*rt.Mount{{ContainerPath: "/mnt", HostPath: src, Readonly: true}}
		}, "sleep", "1000")
		if r := p.exec(c, "touch", "/mnt/f"); r.ExitCode == 0 || !strings.Contains(string(r.Stderr), "Read-only file system") {
			t.Errorf("touch /mnt/f in a read-only volume: exit %d stderr %q, want Read-only file system", r.ExitCode, r.Stderr)
		}
		if r := p.exec(c, "touch", "/mnt/tmpfs/f"); r.ExitCode != 0 {
			t.Errorf("touch /mnt/tmpfs/f in the read-only volume's submount: exit %d stderr %q, want it written", r.ExitCode, r.Stderr)
		}
		if _, err := os.Stat(filepath.Join(sub, "f")); err != nil {
			t.Errorf("the file written in the submount is not on the host: %v", err)
		}
	}},
	{name: "privileged container", run: func(t *testing.T, h string) {
		p := runPod(t, h, func(c *rt.PodSandboxConfig) {
			c.Linux.SecurityContext = &rt.LinuxSandboxSecurityContext{Privileged: true}
		})
		c := p.container("main", func(c *rt.ContainerConfig) {
			c.Linux.SecurityContext.Privileged = true
		}, "sleep", "1000")
		// It can mount.
		if r := p.exec(c, "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && touch /tmp/m/x"); r.ExitCode != 0 {
			t.Errorf("mount a tmpfs in a privileged container: exit %d stderr %q", r.ExitCode, r.Stderr)
		}
		// It sees the devices of the machine it runs on (runv: the VM's): every device
		// node in its /dev has a major its kernel registered, and there are more than a
		// container's default ones (/dev/kmsg).
		nodes := p.out(c, "sh", "-c", `for f in /dev/*; do if [ -L "$f" ]; then continue; elif [ -b "$f" ]; then echo "block $(stat -c %t "$f") $f"; elif [ -c "$f" ]; then echo "char $(stat -c %t "$f") $f"; fi; done`)
		registered := registeredMajors(p.out(c, "cat", "/proc/devices"))
		for _, l := range strings.Split(nodes, "\n") {
			f := strings.Fields(l)
			if len(f) != 3 {
				t.Fatalf("device listing line %q", l)
			}
			major, err := strconv.ParseUint(f[1], 16, 32)
			if err != nil || !registered[f[0]+" "+strconv.FormatUint(major, 10)] {
				t.Errorf("%s is a %s device of major %s, which the container's kernel does not have (/proc/devices): not a device of its machine", f[2], f[0], f[1])
			}
		}
		if !strings.Contains(nodes, "char 1 /dev/kmsg") {
			t.Errorf("a privileged container has no /dev/kmsg:\n%s", nodes)
		}
	}},
	{name: "container stats", runcShimDiffers: "containerd's runc shim reads the stats of the stand-ins' host cgroup, not the VM's", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("main", nil, "sh", "-c", "a=0123456789abcdef; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do a=$a$a; done; sleep 1000")
		var st *rt.ContainerStats
		ok := waitFor(60*time.Second, func() bool {
			r, err := runtimeSvc.ContainerStats(ctx(t), &rt.ContainerStatsRequest{ContainerId: c})
			if err != nil {
				t.Fatalf("ContainerStats: %v", err)
			}
			st = r.Stats
			return st.GetMemory().GetWorkingSetBytes().GetValue() > 0 && st.GetCpu().GetUsageCoreNanoSeconds().GetValue() > 0
		})
		if !ok {
			t.Errorf("ContainerStats: want the container's working set and CPU time, got %v", st)
		}
		l, err := runtimeSvc.ListContainerStats(ctx(t), &rt.ListContainerStatsRequest{Filter: &rt.ContainerStatsFilter{PodSandboxId: p.id}})
		if err != nil || len(l.Stats) != 1 || l.Stats[0].GetMemory().GetWorkingSetBytes().GetValue() == 0 {
			t.Errorf("ListContainerStats: %v %v, want the container with its memory", l, err)
		}
	}},
	{name: "UpdateContainerResources", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("main", func(c *rt.ContainerConfig) {
			c.Linux.Resources = &rt.LinuxContainerResources{MemoryLimitInBytes: 256 << 20}
		}, "sleep", "1000")
		if _, err := runtimeSvc.UpdateContainerResources(ctx(t), &rt.UpdateContainerResourcesRequest{
			ContainerId: c, Linux: &rt.LinuxContainerResources{MemoryLimitInBytes: 96 << 20},
		}); err != nil {
			t.Fatalf("UpdateContainerResources: %v", err)
		}
		// cgroup v2 (runv's guest): the container's own cgroup, from /proc/self/cgroup; v1
		// (this host): the memory hierarchy as mounted in the container.
		limit := p.out(c, "sh", "-c", `if [ -e /sys/fs/cgroup/cgroup.controllers ]; then cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max; else cat /sys/fs/cgroup/memory/memory.limit_in_bytes; fi`)
		if limit != fmt.Sprint(96<<20) {
			t.Errorf("memory limit in the container's cgroup: %s, want %d", limit, 96<<20)
		}
	}},
	{name: "pod IP reachable from the node", run: func(t *testing.T, h string) {
		p := runPod(t, h, nil)
		c := p.container("server", nil, "sh", "-c", "while true; do echo pod-says-hi | nc -l -p 8080; done")
		st, err := runtimeSvc.PodSandboxStatus(ctx(t), &rt.PodSandboxStatusRequest{PodSandboxId: p.id})
		if err != nil {
			t.Fatal(err)
		}
		ip := st.Status.GetNetwork().GetIp()
		if !strings.HasPrefix(ip, "10.89.0.") {
			t.Fatalf("pod IP %q, want one of the CNI range 10.89.0.0/24", ip)
		}
		if got := p.out(c, "sh", "-c", "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'"); got != "inet "+ip {
			t.Errorf("eth0 in the container: %q, want inet %s", got, ip)
		}
		// Nothing but what CNI configured: no other address (a pooled VM's network
		// warm-up leaves none behind), and its routes.
		if got := p.out(c, "sh", "-c", "ip -o addr | grep -v ' lo ' | grep -v ' scope link' | awk '{print $4}' | tr '\\n' ' '"); strings.TrimSpace(got) != ip+"/24" {
			t.Errorf("addresses in the container: %q, want only %s/24", got, ip)
		}
		if got := p.out(c, "sh", "-c", "ip -4 route | awk '{print $1}' | sort | tr '\\n' ' '"); strings.TrimSpace(got) != "10.89.0.0/24 default" {
			t.Errorf("IPv4 routes in the container: %q, want 10.89.0.0/24 and the default", got)
		}
		if out, err := readFromNode(ip + ":8080"); strings.TrimSpace(out) != "pod-says-hi" {
			t.Errorf("connect to %s:8080 from the node: %v %q, want pod-says-hi", ip, err, out)
		}
	}},
	{name: "hostPort through portmap", run: func(t *testing.T, h string) {
		const hostPort = 18080
		t.Cleanup(func() {
			// Registered first, so run last: after the pod's removal no DNAT rule of
			// portmap's names the host port.
			rules, err := exec.Command("nsenter", "--net=/run/netns/"+netnsName, "iptables", "-t", "nat", "-S").CombinedOutput()
			if err != nil || strings.Contains(string(rules), fmt.Sprint(hostPort)) {
				t.Errorf("NAT rules after the pod was removed (%v):\n%s", err, rules)
			}
		})
		p := runPod(t, h, func(c *rt.PodSandboxConfig) {
			c.PortMappings = []*rt.PortMapping{{Protocol: rt.Protocol_TCP, ContainerPort: 8080, HostPort: hostPort}}
		})
		p.container("server", nil, "sh", "-c", "while true; do echo hostport-says-hi | nc -l -p 8080; done")
		// The node's address on the CNI bridge: portmap's DNAT takes connections to any
		// of the node's addresses at the host port to the pod.
		addr := fmt.Sprintf("%s:%d", nodeIP, hostPort)
		if out, err := readFromNode(addr); strings.TrimSpace(out) != "hostport-says-hi" {
			t.Errorf("connect to the host port %s from the node: %v %q, want hostport-says-hi", addr, err, out)
		}
	}},
}

// nodeIP is the node's address on the CNI bridge (the gateway of the CNI range).
const nodeIP = "10.89.0.1"

// readFromNode reads what a server sends to a connection from the node (containerd's
// network namespace) to addr, retrying until it answers or a minute passed (the server
// may still be starting).
func readFromNode(addr string) (out string, err error) {
	waitFor(60*time.Second, func() bool {
		out, err = readInNetns("/run/netns/"+netnsName, addr)
		return err == nil && out != ""
	})
	return out, err
}

// TestCRIHostNamespacesRefused: a pod asking for the node's network or IPC namespace runs
// with runc; runv refuses it at RunPodSandbox with an error naming the namespace (a VM
// cannot share it) and leaves nothing behind.
func TestCRIHostNamespacesRefused(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		ns         *rt.NamespaceOption
	}{
		{"hostNetwork", "host's network", &rt.NamespaceOption{Network: rt.NamespaceMode_NODE}},
		{"hostIPC", "host's IPC", &rt.NamespaceOption{Ipc: rt.NamespaceMode_NODE}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := func(c *rt.PodSandboxConfig) {
				c.Linux.SecurityContext = &rt.LinuxSandboxSecurityContext{NamespaceOptions: tc.ns}
				if tc.ns.Network == rt.NamespaceMode_NODE {
					c.Hostname = "" // as kubelet: a host-network pod has the node's
				}
			}
			t.Run("runc", func(t *testing.T) { runPod(t, "runc", cfg) })
			t.Run("runv", func(t *testing.T) {
				c := &rt.PodSandboxConfig{
					Metadata:     &rt.PodSandboxMetadata{Name: "refused-" + strings.ToLower(tc.name), Namespace: "default", Uid: "refused-" + tc.name},
					LogDirectory: filepath.Join(work, "logs", "refused"),
					Linux:        &rt.LinuxPodSandboxConfig{CgroupParent: cgroupRoot + "/refused"},
				}
				cfg(c)
				_, err := runtimeSvc.RunPodSandbox(ctx(t), &rt.RunPodSandboxRequest{Config: c, RuntimeHandler: "runv"})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("RunPodSandbox %s with runv: %v, want a refusal naming the %s namespace", tc.name, err, tc.want)
				}
				pods, _ := runtimeSvc.ListPodSandbox(ctx(t), &rt.ListPodSandboxRequest{})
				for _, p := range pods.GetItems() {
					if p.Metadata.Uid == c.Metadata.Uid {
						t.Errorf("a refused pod is listed: %v", p)
						runtimeSvc.RemovePodSandbox(ctx(t), &rt.RemovePodSandboxRequest{PodSandboxId: p.Id})
					}
				}
				if left := leftovers(); len(left) > 0 {
					t.Errorf("processes left: %v", left)
				}
			})
		})
	}
}

// registeredMajors parses /proc/devices into "char N" and "block N" keys.
func registeredMajors(procDevices string) map[string]bool {
	out := map[string]bool{}
	kind := ""
	for _, l := range strings.Split(procDevices, "\n") {
		switch strings.TrimSpace(l) {
		case "Character devices:":
			kind = "char"
			continue
		case "Block devices:":
			kind = "block"
			continue
		}
		if f := strings.Fields(l); len(f) == 2 && kind != "" {
			out[kind+" "+f[0]] = true
		}
	}
	return out
}

// readInNetns connects to addr from inside the network namespace at nsPath (the node's,
// where containerd and the CNI bridge are) and returns what the server sends until it
// closes the connection.
func readInNetns(nsPath, addr string) (string, error) {
	var conn net.Conn
	var err error
	if nerr := nettest.InNetns(nsPath, func() { conn, err = net.DialTimeout("tcp", addr, 5*time.Second) }); nerr != nil {
		return "", nerr
	}
	if err != nil {
		return "", err
	}
	return exchange(conn, "")
}
