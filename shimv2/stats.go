package shimv2

import (
	"fmt"

	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/runv-project/runv/api/agentproto"
)

// metrics packs the guest's figures of a container's cgroup as containerd's cgroup v2
// metrics (the guest runs cgroup v2), which `ctr task metrics` and the CRI read.
func metrics(st agentproto.Stats) (*anypb.Any, error) {
	m := &v2.Metrics{
		Pids: &v2.PidsStat{Current: st.Pids, Limit: st.PidsLimit},
		CPU: &v2.CPUStat{
			UsageUsec: st.CPUUsageNanos / 1000, UserUsec: st.CPUUserNanos / 1000, SystemUsec: st.CPUSystemNanos / 1000,
			NrPeriods: st.CPUPeriods, NrThrottled: st.CPUThrottledPeriods, ThrottledUsec: st.CPUThrottledNanos / 1000,
		},
		Memory: &v2.MemoryStat{
			Usage: st.MemoryUsageBytes, UsageLimit: st.MemoryLimitBytes,
			SwapUsage: st.SwapUsageBytes, SwapLimit: st.SwapLimitBytes,
		},
	}
	if ms := st.MemoryStat; ms != nil {
		mem := m.Memory
		for k, dst := range map[string]*uint64{
			"anon": &mem.Anon, "file": &mem.File, "kernel_stack": &mem.KernelStack, "slab": &mem.Slab,
			"sock": &mem.Sock, "shmem": &mem.Shmem, "file_mapped": &mem.FileMapped, "file_dirty": &mem.FileDirty,
			"file_writeback": &mem.FileWriteback, "anon_thp": &mem.AnonThp, "inactive_anon": &mem.InactiveAnon,
			"active_anon": &mem.ActiveAnon, "inactive_file": &mem.InactiveFile, "active_file": &mem.ActiveFile,
			"unevictable": &mem.Unevictable, "slab_reclaimable": &mem.SlabReclaimable,
			"slab_unreclaimable": &mem.SlabUnreclaimable, "pgfault": &mem.Pgfault, "pgmajfault": &mem.Pgmajfault,
			"workingset_refault": &mem.WorkingsetRefault, "workingset_activate": &mem.WorkingsetActivate,
			"workingset_nodereclaim": &mem.WorkingsetNodereclaim, "pgrefill": &mem.Pgrefill, "pgscan": &mem.Pgscan,
			"pgsteal": &mem.Pgsteal, "pgactivate": &mem.Pgactivate, "pgdeactivate": &mem.Pgdeactivate,
			"pglazyfree": &mem.Pglazyfree, "pglazyfreed": &mem.Pglazyfreed, "thp_fault_alloc": &mem.ThpFaultAlloc,
			"thp_collapse_alloc": &mem.ThpCollapseAlloc,
		} {
			*dst = ms[k]
		}
	}
	if ev := st.MemoryEvents; ev != nil {
		m.MemoryEvents = &v2.MemoryEvents{Low: ev["low"], High: ev["high"], Max: ev["max"], Oom: ev["oom"], OomKill: ev["oom_kill"]}
	}
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		return nil, fmt.Errorf("encode cgroup metrics: %w", err)
	}
	return &anypb.Any{TypeUrl: a.GetTypeUrl(), Value: a.GetValue()}, nil
}
