package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/docker/go-units"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
)

// updateCommand changes a container's resources, with runc's flags and `-r FILE|-`. The
// limits apply to the container's cgroup in the VM. They do not resize the VM: a memory
// limit above the VM's memory (--default_memory) is accepted and never reached.
//
// The agent replaces each resource group it is sent (memory, cpu, pids, blockIO) whole, so
// runv merges the update field by field into the resources it recorded for the container
// (config.json's, plus earlier updates) and sends the merged groups: a field the update does
// not name keeps its value, as with runc.
var updateCommand = &cli.Command{
	Name:      "update",
	Usage:     "update container resource constraints",
	ArgsUsage: "<container-id>",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "resources", Aliases: []string{"r"}, Usage: "path to a JSON file of OCI linux resources to update, or '-' for stdin (all other options are then ignored)"},
		&cli.IntFlag{Name: "blkio-weight", Usage: "per cgroup block IO weight, 10 to 1000"},
		&cli.StringFlag{Name: "cpu-period", Usage: "CPU CFS period (µs) for hardcapping"},
		&cli.StringFlag{Name: "cpu-quota", Usage: "CPU CFS hardcap limit (µs) per period"},
		&cli.StringFlag{Name: "cpu-burst", Usage: "CPU CFS hardcap burst limit (µs)"},
		&cli.StringFlag{Name: "cpu-share", Usage: "CPU shares (relative weight)"},
		&cli.StringFlag{Name: "cpu-rt-period", Usage: "CPU realtime period (µs)"},
		&cli.StringFlag{Name: "cpu-rt-runtime", Usage: "CPU realtime hardcap limit (µs)"},
		&cli.StringFlag{Name: "cpuset-cpus", Usage: "CPUs to use (of the VM's vCPUs)"},
		&cli.StringFlag{Name: "cpuset-mems", Usage: "memory nodes to use"},
		&cli.StringFlag{Name: "cpu-idle", Usage: "cgroup SCHED_IDLE: 0 or 1"},
		&cli.StringFlag{Name: "memory", Usage: "memory limit (bytes, or with a unit: 512m, 1g)"},
		&cli.StringFlag{Name: "memory-reservation", Usage: "memory soft limit"},
		&cli.StringFlag{Name: "memory-swap", Usage: "memory + swap limit; -1 for unlimited swap"},
		&cli.StringFlag{Name: "kernel-memory", Hidden: true, Usage: "(obsolete; ignored)"},
		&cli.StringFlag{Name: "kernel-memory-tcp", Hidden: true, Usage: "(obsolete; ignored)"},
		&cli.IntFlag{Name: "pids-limit", Usage: "maximum number of pids in the container"},
		&cli.StringFlag{Name: "l3-cache-schema", Usage: "not supported: no Intel RDT in the VM"},
		&cli.StringFlag{Name: "mem-bw-schema", Usage: "not supported: no Intel RDT in the VM"},
	},
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		for _, f := range []string{"l3-cache-schema", "mem-bw-schema"} {
			if c.String(f) != "" {
				return fmt.Errorf("--%s: Intel RDT is not available in the VM: %w", f, errdefs.ErrNotImplemented)
			}
		}
		upd, err := resourcesFromFlags(c)
		if err != nil {
			return err
		}
		return updateContainer(g, id, upd)
	},
}

// resourcesFromFlags reads the update as runc does: the -r JSON, or the flags.
func resourcesFromFlags(c *cli.Context) (*specs.LinuxResources, error) {
	if in := c.String("resources"); in != "" {
		var r io.Reader = os.Stdin
		if in != "-" {
			f, err := os.Open(in)
			if err != nil {
				return nil, fmt.Errorf("--resources: %w", err)
			}
			defer f.Close()
			r = f
		}
		var res specs.LinuxResources
		if err := json.NewDecoder(r).Decode(&res); err != nil {
			return nil, fmt.Errorf("--resources %s: not OCI linux resources JSON: %v: %w", in, err, errdefs.ErrInvalidArgument)
		}
		return &res, nil
	}
	res := &specs.LinuxResources{Memory: &specs.LinuxMemory{}, CPU: &specs.LinuxCPU{}, Pids: &specs.LinuxPids{}, BlockIO: &specs.LinuxBlockIO{}}
	invalid := func(flag, val string, err error) error {
		return fmt.Errorf("invalid value for --%s %q: %v: %w", flag, val, err, errdefs.ErrInvalidArgument)
	}
	if v := c.Int("blkio-weight"); v != 0 {
		if v < 10 || v > 1000 {
			return nil, invalid("blkio-weight", strconv.Itoa(v), fmt.Errorf("must be between 10 and 1000"))
		}
		w := uint16(v)
		res.BlockIO.Weight = &w
	}
	res.CPU.Cpus, res.CPU.Mems = c.String("cpuset-cpus"), c.String("cpuset-mems")
	if v := c.String("cpu-idle"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, invalid("cpu-idle", v, err)
		}
		res.CPU.Idle = &n
	}
	for _, f := range []struct {
		flag string
		dst  **uint64
	}{{"cpu-burst", &res.CPU.Burst}, {"cpu-period", &res.CPU.Period}, {"cpu-rt-period", &res.CPU.RealtimePeriod}, {"cpu-share", &res.CPU.Shares}} {
		if v := c.String(f.flag); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, invalid(f.flag, v, err)
			}
			*f.dst = &n
		}
	}
	for _, f := range []struct {
		flag string
		dst  **int64
	}{{"cpu-quota", &res.CPU.Quota}, {"cpu-rt-runtime", &res.CPU.RealtimeRuntime}} {
		if v := c.String(f.flag); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, invalid(f.flag, v, err)
			}
			*f.dst = &n
		}
	}
	for _, f := range []struct {
		flag string
		dst  **int64
	}{{"memory", &res.Memory.Limit}, {"memory-swap", &res.Memory.Swap}, {"memory-reservation", &res.Memory.Reservation}} {
		if v := c.String(f.flag); v != "" {
			n := int64(-1)
			if v != "-1" {
				var err error
				if n, err = units.RAMInBytes(v); err != nil {
					return nil, invalid(f.flag, v, err)
				}
			}
			*f.dst = &n
		}
	}
	if c.IsSet("pids-limit") {
		n := int64(c.Int("pids-limit"))
		res.Pids.Limit = &n
	}
	return res, nil
}

// updateContainer merges upd into the container's recorded resources, has the agent apply
// the merged groups, and records them. The container's lock is held throughout, so
// concurrent updates do not lose each other's fields.
func updateContainer(g *globals, id string, upd *specs.LinuxResources) error {
	h, err := g.store.Lock(id)
	if err != nil {
		return err
	}
	defer h.Unlock()
	rec, err := h.Load()
	if err != nil {
		return err
	}
	live, err := liveState(rec)
	if err != nil {
		return fmt.Errorf("cannot update container %q: %w", id, err)
	}
	if live.Status == state.StatusStopped {
		return fmt.Errorf("cannot update container %q: %w", id, errNotRunning)
	}
	if rec.Spec == nil {
		rec.Spec = &specs.Spec{}
	}
	if rec.Spec.Linux == nil {
		rec.Spec.Linux = &specs.Linux{}
	}
	merged := mergeResources(rec.Spec.Linux.Resources, upd)
	// Only the groups (and unified keys) this update touches are sent; devices never are
	// (they are not an update, as with runc).
	send := &specs.LinuxResources{Unified: upd.Unified}
	if upd.Memory != nil {
		send.Memory = merged.Memory
	}
	if upd.CPU != nil {
		send.CPU = merged.CPU
	}
	if upd.Pids != nil {
		send.Pids = merged.Pids
	}
	if upd.BlockIO != nil {
		send.BlockIO = merged.BlockIO
	}
	body, err := json.Marshal(send)
	if err != nil {
		return fmt.Errorf("encode resources: %w", err)
	}
	pod, err := dialLive(rec)
	if err != nil {
		return fmt.Errorf("cannot update container %q: %w", id, errNotRunning)
	}
	defer pod.Close()
	ctx, cancel := ctxTimeout(30 * time.Second)
	defer cancel()
	if _, err := pod.api.Update(ctx, &podapi.UpdateRequest{Id: id, Resources: body}); err != nil {
		return fmt.Errorf("update container %q: %w", id, rpcErr(err))
	}
	rec.Spec.Linux.Resources = merged
	if err := h.Save(rec); err != nil {
		return err
	}
	return rec.HostCgroup.Update(id, rec.Spec)
}

// mergeResources overlays the fields upd sets onto cur, as `runc update` does (neither is
// modified). The agent then only replaces whole groups (agent/resources.go): this is where
// runc's field-level rule lives.
func mergeResources(cur, upd *specs.LinuxResources) *specs.LinuxResources {
	var out specs.LinuxResources
	if cur != nil {
		out = deepCopy(*cur)
	}
	if m := upd.Memory; m != nil {
		if out.Memory == nil {
			out.Memory = &specs.LinuxMemory{}
		}
		setIf(&out.Memory.Limit, m.Limit)
		setIf(&out.Memory.Reservation, m.Reservation)
		setIf(&out.Memory.Swap, m.Swap)
		setIf(&out.Memory.Swappiness, m.Swappiness)
		setIf(&out.Memory.CheckBeforeUpdate, m.CheckBeforeUpdate)
		// As runc: removing the memory limit removes the swap limit with it.
		if m.Limit != nil && *m.Limit == -1 && m.Swap == nil {
			none := int64(-1)
			out.Memory.Swap = &none
		}
	}
	if cpu := upd.CPU; cpu != nil {
		if out.CPU == nil {
			out.CPU = &specs.LinuxCPU{}
		}
		setIf(&out.CPU.Shares, cpu.Shares)
		setIf(&out.CPU.Quota, cpu.Quota)
		setIf(&out.CPU.Burst, cpu.Burst)
		setIf(&out.CPU.Period, cpu.Period)
		setIf(&out.CPU.RealtimeRuntime, cpu.RealtimeRuntime)
		setIf(&out.CPU.RealtimePeriod, cpu.RealtimePeriod)
		setIf(&out.CPU.Idle, cpu.Idle)
		if cpu.Cpus != "" {
			out.CPU.Cpus = cpu.Cpus
		}
		if cpu.Mems != "" {
			out.CPU.Mems = cpu.Mems
		}
	}
	if p := upd.Pids; p != nil && p.Limit != nil {
		out.Pids = &specs.LinuxPids{Limit: p.Limit}
	}
	if b := upd.BlockIO; b != nil {
		if out.BlockIO == nil {
			out.BlockIO = &specs.LinuxBlockIO{}
		}
		setIf(&out.BlockIO.Weight, b.Weight)
		setIf(&out.BlockIO.LeafWeight, b.LeafWeight)
		if len(b.WeightDevice) > 0 {
			out.BlockIO.WeightDevice = b.WeightDevice
		}
		for _, f := range []struct{ dst, src *[]specs.LinuxThrottleDevice }{
			{&out.BlockIO.ThrottleReadBpsDevice, &b.ThrottleReadBpsDevice},
			{&out.BlockIO.ThrottleWriteBpsDevice, &b.ThrottleWriteBpsDevice},
			{&out.BlockIO.ThrottleReadIOPSDevice, &b.ThrottleReadIOPSDevice},
			{&out.BlockIO.ThrottleWriteIOPSDevice, &b.ThrottleWriteIOPSDevice},
		} {
			if len(*f.src) > 0 {
				*f.dst = *f.src
			}
		}
	}
	if len(upd.Unified) > 0 {
		if out.Unified == nil {
			out.Unified = map[string]string{}
		}
		for k, v := range upd.Unified {
			out.Unified[k] = v
		}
	}
	return &out
}

// deepCopy copies resources through JSON, which cannot fail for them: they hold no
// channels, functions or cyclic pointers.
func deepCopy(r specs.LinuxResources) specs.LinuxResources {
	var out specs.LinuxResources
	b, err := json.Marshal(r)
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	if err != nil {
		panic(fmt.Sprintf("copy resources: %v", err))
	}
	return out
}

// setIf replaces *dst with src when src is set.
func setIf[T any](dst **T, src *T) {
	if src != nil {
		v := *src
		*dst = &v
	}
}
