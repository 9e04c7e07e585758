//go:build integration

package agent

import (
	"fmt"
	"sort"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
)

// TestVMCgroupFilesAgree makes the same containers in a guest whose containers are
// libcontainer's (runv.create=libcontainer: its cgroup manager makes and sets every cgroup)
// and in one of the create engine (containerCgroup: a cgroup with device rules only is made
// here), and compares what a user of each container reads in its cgroup's files (the
// directory /proc/self/cgroup names): its type, the controllers its parent gave it, every
// limit, before and after an update. Both guests are warmed first, as a template or a
// pooled VM is: the create engine's first container gets the spare cgroup its warm-up left.
func TestVMCgroupFilesAgree(t *testing.T) {
	pids := int64(42)
	memory, reservation, swap := int64(96<<20), int64(32<<20), int64(128<<20)
	shares, quota, period := uint64(512), int64(50000), uint64(100000)
	cases := []struct {
		name   string
		res    func(*specs.LinuxResources)
		update *specs.LinuxResources
	}{
		// The first container takes the spare cgroup the warm-up left (the create engine's
		// guest): a limit set later goes to libcontainer's manager, which must find it.
		{name: "devices only, then a memory limit", res: func(*specs.LinuxResources) {},
			update: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &memory}}},
		{name: "devices only", res: func(*specs.LinuxResources) {}},
		{name: "devices only, then a pids limit", res: func(*specs.LinuxResources) {},
			update: &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pids}}},
		{name: "pids", res: func(r *specs.LinuxResources) { r.Pids = &specs.LinuxPids{Limit: &pids} }},
		{name: "memory", res: func(r *specs.LinuxResources) {
			r.Memory = &specs.LinuxMemory{Limit: &memory, Reservation: &reservation, Swap: &swap}
		}},
		{name: "cpu", res: func(r *specs.LinuxResources) {
			r.CPU = &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period}
		}},
		{name: "cpuset", res: func(r *specs.LinuxResources) { r.CPU = &specs.LinuxCPU{Cpus: "0", Mems: "0"} }},
		{name: "unified", res: func(r *specs.LinuxResources) { r.Unified = map[string]string{"memory.high": "67108864"} }},
	}
	dumps := map[string][]string{}
	for _, cmdline := range []string{"runv.create=libcontainer", ""} {
		v := bootVM(t, vmOptions{cmdline: cmdline})
		v.event(agentproto.MsgReady)
		// As a template or a pooled VM is warmed before its pod.
		v.mustCall(agentproto.MsgWarmup, agentproto.WarmupRequest{ShareTag: agentproto.ShareTag}, nil)
		v.startPod("cg")
		var out []string
		for i, tc := range cases {
			id := fmt.Sprintf("c%d", i)
			rootfs, spec := v.busyboxContainer(id, "sleep", "1000")
			tc.res(spec.Linux.Resources)
			hp, _, err := v.newContainer(id, spec, rootfs, true)
			if err != nil {
				t.Fatalf("%s (%q): NEWCONTAINER: %v", tc.name, cmdline, err)
			}
			v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: id}, nil)
			out = append(out, tc.name+": "+cgroupFiles(t, v, id, spec, "e0"))
			if tc.update != nil {
				v.mustCall(agentproto.MsgUpdateContainer, agentproto.UpdateContainer{Container: id, Resources: tc.update}, nil)
				out = append(out, tc.name+", updated: "+cgroupFiles(t, v, id, spec, "e1"))
			}
			v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: id, Process: agentproto.InitProcessID, Signal: int(syscall.SIGKILL)}, nil)
			v.exitOf(id, agentproto.InitProcessID)
			v.output(hp.stdout)
			v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: id}, nil)
		}
		destroy(t, v)
		dumps[cmdline] = out
	}
	lib, engine := dumps["runv.create=libcontainer"], dumps[""]
	for i := range lib {
		if lib[i] != engine[i] {
			t.Errorf("cgroup files differ:\nlibcontainer: %s\ncreate engine: %s", lib[i], engine[i])
		}
	}
	if len(lib) == 0 || !strings.Contains(lib[0], "cgroup.controllers=") {
		t.Fatalf("no cgroup files read: %q", lib)
	}
	t.Logf("the same in both guests:\n%s", strings.Join(engine, "\n"))
}

// cgroupFiles reads, through an exec in the container, its cgroup's files that hold set-up
// rather than usage: "name=content" sorted, one line.
func cgroupFiles(t *testing.T, v *testVM, id string, spec *specs.Spec, exec string) string {
	t.Helper()
	hp, err := v.exec(id, exec, execProcess(spec, "sh", "-c",
		`d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup) && echo "../cgroup.subtree_control=$(cat $d/../cgroup.subtree_control)" && cd $d &&
		for f in *; do [ -f "$f" ] && c=$(cat "$f" 2>/dev/null) && echo "$f=$c" | tr "\n" " " && echo; done; true`), 0, 0)
	if err != nil {
		t.Fatalf("exec in %s: %v", id, err)
	}
	out := v.output(hp.stdout)
	if e := v.exitOf(id, exec); e.ExitCode != 0 {
		t.Fatalf("exec in %s: exit %+v, stderr %q", id, e, v.output(hp.errout))
	}
	var keep []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, _, _ := strings.Cut(line, "=")
		if usageFile(name) {
			continue
		}
		keep = append(keep, strings.TrimSpace(line))
	}
	sort.Strings(keep)
	return strings.Join(keep, " | ")
}

// usageFile tells the cgroup files that count what the container did (they differ between
// any two containers) from those that hold its set-up.
func usageFile(name string) bool {
	for _, suffix := range []string{".stat", ".current", ".events", ".events.local", ".pressure", ".peak", ".procs", ".threads", ".numa_stat", ".stat.local"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}
