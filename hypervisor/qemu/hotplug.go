package qemu

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// hotplugVM is a q35 VM booted with room to grow (MaxCPUs or MaxMemoryMiB). Only such VMs
// implement hypervisor.Hotplugger, so a type assertion tells the caller what it can do.
type hotplugVM struct {
	*vm
	// mu serialises plugs: device ids are derived from what QEMU reports, so two
	// concurrent plugs would pick the same one.
	mu sync.Mutex
}

var _ hypervisor.Hotplugger = (*hotplugVM)(nil)

// hotpluggableCPU is an entry of query-hotpluggable-cpus.
type hotpluggableCPU struct {
	Type    string         `json:"type"`
	Props   map[string]int `json:"props"`
	QOMPath string         `json:"qom-path,omitempty"`
}

// HotplugCPUs plugs vCPUs until total are present. The guest must still online them
// (the agent writes /sys/devices/system/cpu/cpuN/online: there is no udev in the guest).
func (v *hotplugVM) HotplugCPUs(ctx context.Context, total int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	max := max(v.cfg.MaxCPUs, v.cfg.CPUs)
	if total > max {
		return fmt.Errorf("vm %s: cannot grow to %d vCPUs: booted with at most %d: %w", v.cfg.ID, total, max, errdefs.ErrInvalidArgument)
	}
	var cpus []hotpluggableCPU
	if err := v.qmp(ctx, "query-hotpluggable-cpus", nil, &cpus); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	var free []hotpluggableCPU
	present := 0
	for _, c := range cpus {
		if c.QOMPath != "" {
			present++
		} else {
			free = append(free, c)
		}
	}
	switch {
	case total == present:
		return nil
	case total < present:
		return fmt.Errorf("vm %s: cannot shrink from %d to %d vCPUs: hot-unplug is not supported: %w", v.cfg.ID, present, total, errdefs.ErrNotImplemented)
	}
	// QEMU lists the slots highest first; plug in ascending order so that the guest's
	// CPU numbers follow the topology.
	sort.Slice(free, func(i, j int) bool { return topoLess(free[i].Props, free[j].Props) })
	for _, c := range free[:total-present] {
		args := map[string]any{"driver": c.Type, "id": cpuID(c.Props)}
		for k, val := range c.Props {
			args[k] = val
		}
		if err := v.qmp(ctx, "device_add", args, nil); err != nil {
			return fmt.Errorf("vm %s: plug vCPU %s: %w", v.cfg.ID, cpuID(c.Props), err)
		}
	}
	return nil
}

func topoLess(a, b map[string]int) bool {
	for _, k := range []string{"node-id", "socket-id", "die-id", "core-id", "thread-id"} {
		if a[k] != b[k] {
			return a[k] < b[k]
		}
	}
	return false
}

func cpuID(props map[string]int) string {
	return fmt.Sprintf("cpu-s%d-c%d-t%d", props["socket-id"], props["core-id"], props["thread-id"])
}

// memorySummary is query-memory-size-summary's answer, in bytes.
type memorySummary struct {
	Base    int64 `json:"base-memory"`
	Plugged int64 `json:"plugged-memory"`
}

// HotplugMemory plugs one DIMM so that the VM has at least totalMiB. The DIMM is rounded
// up to 128 MiB, the block size in which Linux onlines hot-plugged memory on x86_64.
func (v *hotplugVM) HotplugMemory(ctx context.Context, totalMiB int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	var sum memorySummary
	if err := v.qmp(ctx, "query-memory-size-summary", nil, &sum); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	const miB = 1 << 20
	current := int((sum.Base + sum.Plugged) / miB)
	switch {
	case totalMiB == current:
		return nil
	case totalMiB < current:
		return fmt.Errorf("vm %s: cannot shrink memory from %d to %d MiB: hot-unplug is not supported: %w", v.cfg.ID, current, totalMiB, errdefs.ErrNotImplemented)
	}
	add := (totalMiB - current + dimmAlignMiB - 1) / dimmAlignMiB * dimmAlignMiB
	if current+add > v.cfg.MaxMemoryMiB {
		return fmt.Errorf("vm %s: cannot grow memory to %d MiB (%d MiB in %d MiB steps): booted with at most %d MiB: %w",
			v.cfg.ID, totalMiB, current+add, dimmAlignMiB, v.cfg.MaxMemoryMiB, errdefs.ErrInvalidArgument)
	}
	var devices []struct {
		Type string `json:"type"`
	}
	if err := v.qmp(ctx, "query-memory-devices", nil, &devices); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	n := len(devices)
	if n >= memorySlots {
		return fmt.Errorf("vm %s: all %d memory slots are used: %w", v.cfg.ID, memorySlots, errdefs.ErrFailedPrecondition)
	}
	memID, dimmID := fmt.Sprintf("mem-dimm%d", n), fmt.Sprintf("dimm%d", n)
	if err := v.qmp(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-ram", "id": memID, "size": int64(add) * miB,
	}, nil); err != nil {
		return fmt.Errorf("vm %s: add %d MiB memory backend: %w", v.cfg.ID, add, err)
	}
	if err := v.qmp(ctx, "device_add", map[string]any{"driver": "pc-dimm", "id": dimmID, "memdev": memID}, nil); err != nil {
		// An unused backend would make the next attempt's id collide.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quitTimeout)
		v.qmp(dctx, "object-del", map[string]any{"id": memID}, nil)
		cancel()
		return fmt.Errorf("vm %s: plug %d MiB DIMM: %w", v.cfg.ID, add, err)
	}
	return nil
}
