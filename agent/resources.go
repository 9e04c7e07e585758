package agent

import specs "github.com/opencontainers/runtime-spec/specs-go"

// mergeResources overlays the resource groups set in upd onto old: a group the host leaves
// nil keeps its current value. It merges whole groups, not fields like the CLI's (cmd/runv
// update.go) because the host sends every group it touches complete, already merged there.
// Devices are not merged: device access is fixed at creation.
func mergeResources(old, upd *specs.LinuxResources) *specs.LinuxResources {
	var out specs.LinuxResources
	if old != nil {
		out = *old
	}
	if upd == nil {
		return &out
	}
	if upd.Memory != nil {
		out.Memory = upd.Memory
	}
	if upd.CPU != nil {
		out.CPU = upd.CPU
	}
	if upd.Pids != nil {
		out.Pids = upd.Pids
	}
	if upd.BlockIO != nil {
		out.BlockIO = upd.BlockIO
	}
	if upd.HugepageLimits != nil {
		out.HugepageLimits = upd.HugepageLimits
	}
	if upd.Network != nil {
		out.Network = upd.Network
	}
	if upd.Rdma != nil {
		out.Rdma = upd.Rdma
	}
	if upd.Unified != nil {
		out.Unified = upd.Unified
	}
	return &out
}
