//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/test/poll"
)

// The cache kind: `runv manage factory-daemon` keeps pooled VMs, each in a holder process,
// and hands them to pod daemons started with the same --factory policy. And VM sizing:
// the pod's first container's linux.resources size its VM (oci.VMSize).

// cachePolicy pools one VM, refilled from a template (the default of a pool);
// directCachePolicy pools directly booted VMs.
const (
	cachePolicy       = `[{"cache":1}]`
	directCachePolicy = `[{"template":false,"cache":1}]`
)

// factoryDaemon is a running `runv manage factory-daemon`.
type factoryDaemon struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startFactoryDaemon starts a factory daemon under state root r with the extra global
// flags and waits until its pools are full. It is stopped (SIGTERM) when the test ends,
// if the test did not end it itself.
func startFactoryDaemon(t *testing.T, r string, global ...string) *factoryDaemon {
	t.Helper()
	return startFactoryDaemonOf(t, runvBinary, r, global...)
}

// startFactoryDaemonOf is startFactoryDaemon with the runv binary at path.
func startFactoryDaemonOf(t *testing.T, path, r string, global ...string) *factoryDaemon {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "factory-daemon")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"--root", r, "--kernel", kernel, "--initrd", initrd}, global...)
	cmd := exec.Command(path, append(args, "manage", "factory-daemon")...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd := &factoryDaemon{cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { cmd.Wait(); close(fd.done) }()
	t.Cleanup(func() {
		fd.stop(t, syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(fd.log)
			t.Logf("factory daemon log:\n%s", b)
		}
	})
	// Its socket appears once it serves; then --status --wait answers once the pool is full.
	sock := filepath.Join(r, "@factory", "factory.sock")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-fd.done:
			b, _ := os.ReadFile(fd.log)
			t.Fatalf("factory daemon exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("factory daemon did not create %s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fd.waitFull(t, r)
	return fd
}

func (fd *factoryDaemon) waitFull(t *testing.T, r string) {
	t.Helper()
	res := runvIn(t, r, nil, "manage", "factory-daemon", "--status", "--wait", "--timeout", "3m")
	if res.code != 0 {
		t.Fatalf("factory-daemon --status --wait: %s", res)
	}
}

func (fd *factoryDaemon) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	select {
	case <-fd.done:
		return
	default:
	}
	fd.cmd.Process.Signal(sig)
	select {
	case <-fd.done:
	case <-time.After(30 * time.Second):
		fd.cmd.Process.Kill()
		<-fd.done
		t.Errorf("factory daemon did not stop on %v", sig)
	}
}

// podDirOf reads a container's pod directory from its state file.
func podDirOf(t *testing.T, r, id string) string {
	t.Helper()
	var st struct {
		PodDir string `json:"podDir"`
	}
	raw, err := os.ReadFile(filepath.Join(r, id, "state.json"))
	if err == nil {
		err = json.Unmarshal(raw, &st)
	}
	if err != nil || st.PodDir == "" {
		t.Fatalf("state.json of %s: %v: %s", id, err, raw)
	}
	return st.PodDir
}

// pidsNaming returns the live processes whose command line contains s.
func pidsNaming(s string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), s) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// parentOf returns a process's parent pid (0 if it is gone).
func parentOf(pid int) int {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// waitUntil polls cond until it holds or the deadline passes (it watches other processes'
// state, for which there is no event to wait on).
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !poll.Until(timeout, 50*time.Millisecond, cond) {
		t.Fatalf("%s: not within %s", what, timeout)
	}
}

// A pod gets a pooled VM (its VM directory holds the holder's socket), held by the holder's
// own binary beside runv, or by runv itself where that is not installed; the pool refills;
// killing the factory daemon kills the pooled VMs but not the handed-out one; killing the
// pod daemon kills its VM. Pools of template clones (the default) and of direct boots.
func TestCacheFactoryDaemonHandsOutVMs(t *testing.T) {
	t.Parallel()
	holderBinary := filepath.Join(filepath.Dir(runvBinary), "runv-holder")
	if _, err := os.Stat(holderBinary); err != nil {
		t.Fatalf("no holder binary beside RUNV_BINARY (make build makes it): %v", err)
	}
	// runv alone in a directory: its factory daemon holds VMs as runv itself.
	runvAlone := filepath.Join(t.TempDir(), "runv")
	if out, err := exec.Command("cp", runvBinary, runvAlone).CombinedOutput(); err != nil {
		t.Fatalf("copy runv: %v: %s", err, out)
	}
	for _, tc := range []struct{ name, policy, pool, runv, holder string }{
		{"template refills", cachePolicy, "template-1c-128m", runvBinary, holderBinary},
		{"direct refills", directCachePolicy, "direct-1c-128m", runvBinary, holderBinary},
		{"template refills, runv holding", cachePolicy, "template-1c-128m", runvAlone, runvAlone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testCacheHandsOutVMs(t, tc.policy, tc.pool, tc.runv, tc.holder)
		})
	}
}

// testCacheHandsOutVMs runs the factory daemon of the runv binary at runv, whose holders
// must be the program at holder.
func testCacheHandsOutVMs(t *testing.T, cachePolicy, pool, runv, holder string) {
	r := templateRoot(t)
	fd := startFactoryDaemonOf(t, runv, r, "--factory", cachePolicy)
	factoryDir := filepath.Join(r, "@factory")
	t.Cleanup(func() {
		os.RemoveAll(factoryDir) // what a SIGKILLed factory daemon leaves: socket, lock, empty pool dirs
		assertOnlyTemplates(t, r)
	})
	if _, err := os.Stat(filepath.Join(factoryDir, "pools", pool)); err != nil {
		t.Errorf("no pool %s for policy %s: %v", pool, cachePolicy, err)
	}

	id := newID(t)
	if res := runvIn(t, r, nil, "--factory", cachePolicy, "run", "-d", "--bundle", newBundle(t, "sleep", "1000"), id); res.code != 0 {
		t.Fatalf("run -d: %s", res)
	}
	t.Cleanup(func() { runvIn(t, r, nil, "delete", "--force", id) })
	podDir := podDirOf(t, r, id)
	if _, err := os.Stat(filepath.Join(podDir, "vm", "holder.sock")); err != nil {
		log, _ := os.ReadFile(filepath.Join(podDir, "daemon.log"))
		t.Fatalf("the pod's VM is not a pooled one (%v); daemon log:\n%s", err, log)
	}
	// runv asked the factory daemon for the VM while the pod daemon started, on its behalf.
	if log, _ := os.ReadFile(filepath.Join(podDir, "daemon.log")); !bytes.Contains(log, []byte("fetched by the pod's starter")) {
		t.Errorf("the pod's VM was not fetched while its daemon started; daemon log:\n%s", log)
	}
	qemuPid := readPid(t, filepath.Join(podDir, "vm", "qemu.pid"))
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", parentOf(qemuPid))); err != nil || exe != holder {
		t.Errorf("the pooled VM's holder runs %q (%v), want %s", exe, err, holder)
	}
	if res := runvIn(t, r, nil, "exec", id, "true"); res.code != 0 {
		t.Fatalf("exec in the pooled VM: %s", res)
	}
	// The pod daemon took over the connection the holder parked the agent on: the agent
	// never saw its host go and come back (holder.detach).
	if console, _ := os.ReadFile(filepath.Join(podDir, "vm", "console.log")); bytes.Contains(console, []byte("host disconnected from the control port")) {
		t.Errorf("the pooled VM's agent saw the host reconnect at the hand-out; console:\n%s", console)
	}
	// The pooled QEMU is jailed, and the container's rootfs, mounted by the pod daemon
	// under a share that moved from the pool to the pod after QEMU started, reached it.
	assertOwnMountNamespace(t, qemuPid)
	rootfsInJail := false
	for _, m := range mountsOf(t, qemuPid) {
		rootfsInJail = rootfsInJail || strings.HasSuffix(m.point, "/share/"+id+"/rootfs")
	}
	if !rootfsInJail {
		t.Errorf("the container's rootfs is not mounted in the pooled QEMU's namespace")
	}

	// A foreground run of the cache kind, once the pool refilled.
	fd.waitFull(t, r)
	if res := runvIn(t, r, nil, "--factory", cachePolicy, "run", "--bundle", newBundle(t, "sh", "-c", "echo from-the-pool"), newID(t)); res.code != 0 || !strings.Contains(res.stdout, "from-the-pool") {
		t.Fatalf("run: %s", res)
	}
	fd.waitFull(t, r)

	// SIGKILL the factory daemon: the pooled VM goes (its holder watches the daemon), the
	// handed-out one stays.
	fd.stop(t, syscall.SIGKILL)
	handed := map[int]bool{qemuPid: true, parentOf(qemuPid): true} // QEMU and its holder
	waitUntil(t, "pooled VMs gone after the factory daemon was killed", 15*time.Second, func() bool {
		for _, pid := range pidsNaming(filepath.Join(factoryDir, "pools")) {
			if !handed[pid] {
				return false
			}
		}
		return true
	})
	if !alive(qemuPid) {
		t.Fatal("the handed-out VM died with the factory daemon")
	}
	if st := stateOf(t, r, id); st.Status != "running" {
		t.Fatalf("container %s is %s after the factory daemon died", id, st.Status)
	}
	if res := runvIn(t, r, nil, "exec", id, "echo", "still-here"); res.code != 0 || !strings.Contains(res.stdout, "still-here") {
		t.Fatalf("exec after the factory daemon died: %s", res)
	}

	// SIGKILL the pod daemon: its VM goes with it, as a directly booted one does.
	var rec struct {
		Daemon struct {
			Pid int `json:"pid"`
		} `json:"daemon"`
	}
	raw, _ := os.ReadFile(filepath.Join(r, id, "state.json"))
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Daemon.Pid == 0 {
		t.Fatalf("no pod daemon pid in state.json: %v: %s", err, raw)
	}
	syscall.Kill(rec.Daemon.Pid, syscall.SIGKILL)
	waitUntil(t, "handed-out VM gone after its pod daemon was killed", 15*time.Second, func() bool { return !alive(qemuPid) })
	if res := runvIn(t, r, nil, "delete", "--force", id); res.code != 0 {
		t.Fatalf("delete: %s", res)
	}
}

// A graceful stop (SIGTERM) kills the pooled VMs and removes the factory daemon's directory.
func TestCacheFactoryDaemonStopCleansUp(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	fd := startFactoryDaemon(t, r, "--factory", `[{"cache":2}]`)
	fd.stop(t, syscall.SIGTERM)
	if fd.cmd.ProcessState.ExitCode() != 0 {
		b, _ := os.ReadFile(fd.log)
		t.Errorf("factory daemon exited %d on SIGTERM: %s", fd.cmd.ProcessState.ExitCode(), b)
	}
	assertOnlyTemplates(t, r)
	// Without a factory daemon, pods of the cache kind get their VM from the entry's own
	// kind: a clone of the template the pool made.
	if res := runvIn(t, r, nil, "--factory", cachePolicy, "run", "--bundle", newBundle(t, "true"), newID(t)); res.code != 0 {
		t.Fatalf("run without a factory daemon: %s", res)
	}
	assertOnlyTemplates(t, r)
}

// sizeBundle is a bundle whose container prints its vCPUs and MemTotal (kB) and asks for
// cpus vCPUs (quota/period) and memMiB of memory (0: asks for nothing).
func sizeBundle(t *testing.T, cpus, memMiB int, args ...string) string {
	t.Helper()
	if len(args) == 0 {
		args = []string{"sh", "-c", `grep -c ^processor /proc/cpuinfo; awk '/^MemTotal/{print $2}' /proc/meminfo`}
	}
	return newBundleWith(t, func(s *specs.Spec) {
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		if cpus > 0 {
			quota, period := int64(cpus*100000), uint64(100000)
			s.Linux.Resources.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
		}
		if memMiB > 0 {
			limit := int64(memMiB) << 20
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		}
	}, args...)
}

// parseSize reads what sizeBundle's command printed.
func parseSize(t *testing.T, out string) (cpus, memKB int) {
	t.Helper()
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("unexpected output %q", out)
	}
	cpus, err1 := strconv.Atoi(f[0])
	memKB, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		t.Fatalf("unexpected output %q", out)
	}
	return cpus, memKB
}

// checkSize asserts what a 2-vCPU, 512 MiB pod sees: /proc/meminfo's MemTotal is the VM's
// memory less what the guest kernel keeps for itself.
func checkSize(t *testing.T, out string) {
	t.Helper()
	cpus, memKB := parseSize(t, out)
	if cpus != 2 || memKB < 440<<10 || memKB > 512<<10 {
		t.Fatalf("the container sees %d vCPUs and MemTotal %d kB; want 2 and about 512 MiB", cpus, memKB)
	}
	t.Logf("2 vCPUs and MemTotal %d kB", memKB)
}

// The pod's first container sizes the VM: linux.resources.cpu quota/period and
// memory.limit (microvm: a direct boot of that size).
func TestVMSizedFromSpec(t *testing.T) {
	t.Parallel()
	res := runv(t, nil, "run", "--bundle", sizeBundle(t, 2, 512), newID(t))
	if res.code != 0 {
		t.Fatalf("run: %s", res)
	}
	checkSize(t, res.stdout)

	// Nothing asked: the defaults (1 vCPU, 128 MiB).
	res = runv(t, nil, "run", "--bundle", sizeBundle(t, 0, 0), newID(t))
	if res.code != 0 {
		t.Fatalf("run: %s", res)
	}
	if cpus, memKB := parseSize(t, res.stdout); cpus != 1 || memKB > 128<<10 {
		t.Fatalf("default pod sees %d vCPUs and MemTotal %d kB; want 1 and at most 128 MiB", cpus, memKB)
	}
}

// On q35 a pooled VM smaller than the pod gets CPUs and memory hot-plugged, and the agent
// onlines them (ONLINECPUMEM).
func TestCacheGrowsPooledVMOnQ35(t *testing.T) {
	t.Parallel()
	r := templateRoot(t) // its cleanup runs last: after the daemon stopped
	global := []string{"--machine", "q35", "--factory", cachePolicy}
	startFactoryDaemon(t, r, global...)

	id := newID(t)
	args := append(append([]string{}, global...), "run", "-d", "--bundle", sizeBundle(t, 2, 512, "sleep", "1000"), id)
	if res := runvIn(t, r, nil, args...); res.code != 0 {
		t.Fatalf("run -d: %s", res)
	}
	t.Cleanup(func() { runvIn(t, r, nil, "delete", "--force", id) })
	podDir := podDirOf(t, r, id)
	log, _ := os.ReadFile(filepath.Join(podDir, "daemon.log"))
	if !strings.Contains(string(log), "vm from the factory daemon") || !strings.Contains(string(log), "grown=true") {
		t.Fatalf("the pod did not get a grown pooled VM; daemon log:\n%s", log)
	}
	res := runvIn(t, r, nil, "exec", id, "sh", "-c", `grep -c ^processor /proc/cpuinfo; awk '/^MemTotal/{print $2}' /proc/meminfo`)
	if res.code != 0 {
		t.Fatalf("exec: %s", res)
	}
	checkSize(t, res.stdout)
	if res := runvIn(t, r, nil, "delete", "--force", id); res.code != 0 {
		t.Fatalf("delete: %s", res)
	}
}

// A burst of pods started back to back, more than the pool holds: once no warm VM is
// left, pods get parked VMs before their warm-up (the pool warms one at a time and does
// not make a pod wait for it). Every pod works (its container runs, exec reaches it),
// every pod's QEMU runs at normal priority (pooled VMs are niced), and the pool is full
// and warm again afterwards.
func TestCacheBurstHandsOutColdVMs(t *testing.T) {
	t.Parallel()
	r := templateRoot(t)
	const policy = `[{"cache":2}]`
	fd := startFactoryDaemon(t, r, "--factory", policy)
	t.Cleanup(func() {
		fd.stop(t, syscall.SIGTERM) // after the pods' deletes below; it removes @factory
		assertOnlyTemplates(t, r)
	})
	bundle := newBundle(t, "sleep", "1000")
	var ids []string
	handedOut := map[int]bool{} // the pods' QEMUs and holders: their command lines still name the pool
	for range 5 {
		id := newID(t)
		if res := runvIn(t, r, nil, "--factory", policy, "run", "-d", "--bundle", bundle, id); res.code != 0 {
			t.Fatalf("run -d %s: %s", id, res)
		}
		t.Cleanup(func() { runvIn(t, r, nil, "delete", "--force", id) })
		ids = append(ids, id)
	}
	for _, id := range ids {
		podDir := podDirOf(t, r, id)
		if _, err := os.Stat(filepath.Join(podDir, "vm", "holder.sock")); err != nil {
			t.Errorf("pod %s: not a pooled VM: %v", id, err)
			continue
		}
		if res := runvIn(t, r, nil, "exec", id, "echo", "in-"+id); res.code != 0 || !strings.Contains(res.stdout, "in-"+id) {
			t.Errorf("exec in pod %s: %s", id, res)
		}
		qemuPid := readPid(t, filepath.Join(podDir, "vm", "qemu.pid"))
		if nice := niceOf(t, qemuPid); nice != 0 {
			t.Errorf("pod %s: its QEMU (pid %d) runs at nice %d, want 0", id, qemuPid, nice)
		}
		holder := parentOf(qemuPid)
		if nice := niceOf(t, holder); nice != 0 {
			t.Errorf("pod %s: its VM's holder (pid %d) runs at nice %d, want 0", id, holder, nice)
		}
		handedOut[qemuPid], handedOut[holder] = true, true
	}
	log, _ := os.ReadFile(fd.log)
	if !strings.Contains(string(log), "handing out a vm before its warm-up") {
		t.Errorf("5 pods back to back from a pool of 2: none got a VM before its warm-up; factory daemon log:\n%s", log)
	}
	fd.waitFull(t, r)
	res := runvIn(t, r, nil, "manage", "factory-daemon", "--status")
	var st struct {
		Pools []struct{ Size, Ready, Cold int } `json:"pools"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &st); err != nil || len(st.Pools) != 1 {
		t.Fatalf("status: %v: %s", err, res)
	}
	if p := st.Pools[0]; p.Ready != 2 || p.Cold != 0 {
		t.Errorf("status after --wait: %+v, want 2 ready and none cold", p)
	}
	// The pooled QEMUs yield to the pods; their holders, which serve the hand-outs, do not.
	pooled := 0
	for _, pid := range pidsNaming(filepath.Join(r, "@factory", "pools")) {
		if handedOut[pid] {
			continue
		}
		pooled++
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		want := 0
		if bytes.HasPrefix(comm, []byte("qemu")) {
			want = 10
		}
		if nice := niceOf(t, pid); nice != want {
			t.Errorf("pooled process %d (%s) runs at nice %d, want %d", pid, bytes.TrimSpace(comm), nice, want)
		}
	}
	if pooled != 4 {
		t.Errorf("%d processes in the pool, want 4 (two holders and their QEMUs)", pooled)
	}
}

// niceOf is a process's nice value (field 19 of /proc/PID/stat).
func niceOf(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	nice, err := strconv.Atoi(f[16])
	if err != nil {
		t.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return nice
}
