package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/runv-project/runv/api/agentproto"
)

// Hot-plug as the guest sees it: QEMU's device_add raises an ACPI event and the kernel adds
// the CPU or memory device from a workqueue a little later. Memory comes online by itself
// (CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE); a CPU stays offline until userspace writes its
// online file, which udev would do on a distribution and the agent does here.
const (
	sysCPUDir    = "/sys/devices/system/cpu"
	sysMemoryDir = "/sys/devices/system/memory"
	// onlineWait bounds the wait for hot-plugged devices to appear.
	onlineWait = 10 * time.Second
	// onlinePoll is how often sysfs is re-read while waiting: the kernel sends uevents for
	// the new devices, but reading a few sysfs files is cheaper than parsing them.
	onlinePoll = 10 * time.Millisecond
)

// onlineCPUMem handles ONLINECPUMEM: online every offline CPU and memory block, until the
// host's targets are met or the deadline passes.
func (a *Agent) onlineCPUMem(ctx context.Context, req *Request) (any, error) {
	var want agentproto.OnlineCPUMem
	if len(req.Frame.Data) > 0 {
		if err := req.Decode(&want); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, onlineWait)
	defer cancel()
	tick := time.NewTicker(onlinePoll)
	defer tick.Stop()
	for {
		cpus, err := onlineAll(sysCPUDir, "cpu", "1", "0")
		if err != nil {
			return nil, err
		}
		mem, err := onlineMemory()
		if err != nil {
			return nil, err
		}
		got := agentproto.OnlineCPUMemResult{CPUs: cpus, MemoryMiB: mem}
		if cpus >= want.CPUs && mem >= want.MemoryMiB {
			a.log.Infof("online: %d vCPUs, %d MiB of memory blocks", cpus, mem)
			return got, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, errorf(agentproto.KindState, "hot-plugged devices did not show up within %s: %d vCPUs and %d MiB online, host asked for %d and %d",
				onlineWait, cpus, mem, want.CPUs, want.MemoryMiB)
		}
	}
}

// onlineAll writes on to the online file of every <dir>/<prefix>N whose online file reads
// off, and returns how many are online afterwards. A device without an online file (cpu0
// on x86) counts as online.
func onlineAll(dir, prefix, on, off string) (int, error) {
	entries, err := filepath.Glob(filepath.Join(dir, prefix+"[0-9]*"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range entries {
		if _, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), prefix)); err != nil {
			continue
		}
		f := filepath.Join(d, "online")
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			n++
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", f, err)
		}
		if strings.TrimSpace(string(b)) == off {
			if err := os.WriteFile(f, []byte(on), 0); err != nil {
				return 0, fmt.Errorf("online %s: %w", d, err)
			}
		}
		n++
	}
	return n, nil
}

// onlineMemory onlines every offline memory block and returns the online total in MiB.
func onlineMemory() (int, error) {
	b, err := os.ReadFile(filepath.Join(sysMemoryDir, "block_size_bytes"))
	if os.IsNotExist(err) {
		return 0, nil // no memory hot-plug in this kernel: nothing to online
	}
	if err != nil {
		return 0, fmt.Errorf("memory block size: %w", err)
	}
	size, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("memory block size %q: %w", b, err)
	}
	blocks, err := onlineAll(sysMemoryDir, "memory", "1", "0")
	if err != nil {
		return 0, err
	}
	return int(uint64(blocks) * size >> 20), nil
}
