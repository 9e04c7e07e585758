package shimv2

import (
	"errors"
	"strings"
	"testing"
	"time"

	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/api/types/task"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
)

func TestPodOf(t *testing.T) {
	for _, tc := range []struct {
		name        string
		id          string
		annotations map[string]string
		want        membership
	}{
		{"plain container starts its own pod", "c1", nil, membership{pod: "c1"}},
		{"CRI sandbox", "sb", map[string]string{annotationContainerType: "sandbox", annotationSandboxID: "sb"}, membership{pod: "sb"}},
		{"CRI container joins its sandbox's namespaces", "c1", map[string]string{annotationContainerType: "container", annotationSandboxID: "sb"}, membership{pod: "sb", sandbox: "sb"}},
		{"group shares the VM, not namespaces", "c2", map[string]string{annotationGroup: "g"}, membership{pod: "g"}},
		{"sandbox annotation wins over group", "c3", map[string]string{annotationContainerType: "container", annotationSandboxID: "sb", annotationGroup: "g"}, membership{pod: "sb", sandbox: "sb"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := podOf(tc.id, tc.annotations); got != tc.want {
				t.Errorf("podOf(%q, %v) = %+v, want %+v", tc.id, tc.annotations, got, tc.want)
			}
		})
	}
}

func TestContainerStatus(t *testing.T) {
	for _, tc := range []struct {
		st   string
		exec bool
		want task.Status
	}{
		{state.StatusCreated, false, task.Status_CREATED},
		{state.StatusCreated, true, task.Status_RUNNING},
		{state.StatusRunning, false, task.Status_RUNNING},
		{state.StatusPaused, false, task.Status_PAUSED},
		{state.StatusPaused, true, task.Status_PAUSED},
		{state.StatusStopped, false, task.Status_STOPPED},
	} {
		if got := containerStatus(tc.st, tc.exec); got != tc.want {
			t.Errorf("containerStatus(%q, exec %v) = %v, want %v", tc.st, tc.exec, got, tc.want)
		}
	}
}

// The metrics are containerd's cgroup v2 type, which ctr and the CRI decode by type URL.
func TestMetrics(t *testing.T) {
	a, err := metrics(agentproto.Stats{
		CPUUsageNanos: 5_000_000, MemoryUsageBytes: 1 << 20, MemoryLimitBytes: 64 << 20, Pids: 3,
		MemoryStat: map[string]uint64{"anon": 4096, "file": 8192}, MemoryEvents: map[string]uint64{"oom_kill": 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if a.TypeUrl != "io.containerd.cgroups.v2.Metrics" {
		t.Errorf("type URL %q, want io.containerd.cgroups.v2.Metrics", a.TypeUrl)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := v.(*v2.Metrics)
	if !ok {
		t.Fatalf("decoded %T, want *v2.Metrics", v)
	}
	if m.CPU.UsageUsec != 5000 || m.Memory.Usage != 1<<20 || m.Memory.UsageLimit != 64<<20 || m.Pids.Current != 3 ||
		m.Memory.Anon != 4096 || m.Memory.File != 8192 || m.MemoryEvents.OomKill != 1 {
		t.Errorf("metrics = %v", m)
	}
}

// A CRI handler's options.ConfigPath (runtimeoptions) names its pods' factory policy.
func TestFactoryOption(t *testing.T) {
	pack := func(m proto.Message, url string) *anypb.Any {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return &anypb.Any{TypeUrl: url, Value: b}
	}
	for _, tc := range []struct {
		name    string
		opts    *anypb.Any
		want    string
		refused bool
	}{
		{"no options", nil, "", false},
		{"ConfigPath", pack(&runtimeoptions.Options{ConfigPath: "/etc/runv/pool.json"}, "runtimeoptions.v1.Options"), "/etc/runv/pool.json", false},
		{"runc's options", pack(&runtimeoptions.Options{ConfigPath: "x"}, "containerd.runc.v1.Options"), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := factoryOption(tc.opts)
			if (err != nil) != tc.refused || got != tc.want {
				t.Errorf("factoryOption = %q, %v; want %q, refused %v", got, err, tc.want, tc.refused)
			}
		})
	}
}

func TestPodCgroupPath(t *testing.T) {
	for _, tc := range []struct {
		name       string
		path       string
		criSandbox bool
		want       string
		refused    bool
	}{
		{name: "CRI sandbox: the pod-level parent", path: "/kubepods/pod123/abc", criSandbox: true, want: "/kubepods/pod123"},
		{name: "own pod: its cgroupsPath", path: "/default/c1", want: "/default/c1"},
		{name: "none", path: ""},
		{name: "relative", path: "default/c1"},
		{name: "sandbox at the top", path: "/abc", criSandbox: true},
		{name: "systemd, CRI sandbox: the pod's slice", path: "kubepods-burstable-pod1.slice:cri-containerd:abc", criSandbox: true,
			want: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"},
		{name: "systemd, own pod: its scope", path: "system.slice:docker:abc", want: "/system.slice/docker-abc.scope"},
		{name: "systemd, no slice: system.slice", path: ":runv:abc", want: "/system.slice/runv-abc.scope"},
		{name: "systemd, no prefix", path: "a-b.slice::abc", want: "/a.slice/a-b.slice/abc.scope"},
		{name: "systemd, a slice as the unit", path: "x.slice::a-c.slice", want: "/a.slice/a-c.slice"},
		{name: "systemd, root slice sandbox", path: "-.slice:cri-containerd:abc", criSandbox: true},
		{name: "systemd, two parts", path: "kubepods.slice:abc", refused: true},
		{name: "systemd, not a slice", path: "kubepods:cri-containerd:abc", criSandbox: true, refused: true},
		{name: "systemd, double dash", path: "a--b.slice:cri-containerd:abc", criSandbox: true, refused: true},
		{name: "systemd, slash in the unit", path: "a.slice:x:../../etc", refused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := podCgroupPath(&specs.Spec{Linux: &specs.Linux{CgroupsPath: tc.path}}, tc.criSandbox)
			if tc.refused {
				if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.path) {
					t.Errorf("podCgroupPath(%q) = %q, %v; want an invalid-argument error naming it", tc.path, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("podCgroupPath(%q, sandbox %v) = %q, %v; want %q", tc.path, tc.criSandbox, got, err, tc.want)
			}
		})
	}
}

// The guest is sized to fit, with the VM's overhead, under the pod's cgroup limit.
func TestGuestMiBUnder(t *testing.T) {
	for _, tc := range []struct {
		want  int
		limit uint64
		mib   int
		fits  bool
	}{
		{128, 0, 128, true},         // no limit
		{128, 1 << 30, 128, true},   // plenty
		{128, 160 << 20, 96, true},  // 160 MiB - 64 MiB overhead
		{128, 100 << 20, 64, false}, // not even the smallest guest fits
		{256, 512 << 20, 256, true}, // the wanted size fits
	} {
		if mib, fits := guestMiBUnder(tc.want, tc.limit); mib != tc.mib || fits != tc.fits {
			t.Errorf("guestMiBUnder(%d, %d MiB) = %d, %v; want %d, %v", tc.want, tc.limit>>20, mib, fits, tc.mib, tc.fits)
		}
	}
}

// TestInflight: Shutdown's wait returns at once with no call being served, waits for the
// calls being served, and gives up at its timeout.
func TestInflight(t *testing.T) {
	var f inflight
	if !f.wait(0) {
		t.Fatal("wait with no call being served did not return true")
	}
	end1, end2 := f.begin(), f.begin()
	if f.wait(10 * time.Millisecond) {
		t.Fatal("wait returned true while two calls are being served")
	}
	end1()
	if f.wait(10 * time.Millisecond) {
		t.Fatal("wait returned true while a call is being served")
	}
	done := make(chan bool)
	go func() { done <- f.wait(time.Minute) }()
	end2()
	if !<-done {
		t.Fatal("wait did not return true once the last call ended")
	}
	end3 := f.begin() // counting starts over
	if f.wait(10 * time.Millisecond) {
		t.Fatal("wait returned true while a new call is being served")
	}
	end3()
}

// A container that sets its network namespace's sysctls has the pod's network connected
// before it is created; any other is created while the network is connected.
func TestSetsNetSysctls(t *testing.T) {
	for _, tc := range []struct {
		name   string
		linux  *specs.Linux
		expect bool
	}{
		{"no linux section", nil, false},
		{"no sysctls", &specs.Linux{}, false},
		{"IPC sysctl only", &specs.Linux{Sysctl: map[string]string{"kernel.shm_rmid_forced": "1"}}, false},
		{"dotted net sysctl", &specs.Linux{Sysctl: map[string]string{"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "0"}}, true},
		{"interface sysctl in runc's slash form", &specs.Linux{Sysctl: map[string]string{"net/ipv4/conf/eth0.100/forwarding": "1"}}, true},
		{"a name that only starts like net", &specs.Linux{Sysctl: map[string]string{"netfilter.x": "1"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := setsNetSysctls(&specs.Spec{Linux: tc.linux}); got != tc.expect {
				t.Errorf("setsNetSysctls = %v, want %v", got, tc.expect)
			}
		})
	}
}
