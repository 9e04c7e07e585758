package oci

import (
	"fmt"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
)

// VMSize is the one place where a container's resources become the size of its pod's VM.
// The pod's first container (the sandbox) sizes the VM; containers that join the pod later
// are limited by cgroups inside the VM only. Like runV:
//
//   - vCPUs: the most of ceil(linux.resources.cpu.quota / period) (a quota of 0 or less
//     means unlimited and asks for nothing) and the number of CPUs linux.resources.cpu.cpus
//     needs (its highest CPU number + 1: the guest's cgroup cpuset can only name CPUs the
//     guest has);
//   - memory: linux.resources.memory.limit in MiB, rounded up (runV: limit >> 20); a limit
//     of 0 or less means unlimited and asks for nothing.
//
// What a spec does not ask for is 0: the caller keeps its default, and never gives a VM
// less than the default (the guest kernel and agent need their share, so a 64 MiB
// container still gets the default VM). A malformed cpuset is ErrInvalidArgument.
func VMSize(spec *specs.Spec) (cpus, memoryMiB int, err error) {
	if spec == nil || spec.Linux == nil || spec.Linux.Resources == nil {
		return 0, 0, nil
	}
	r := spec.Linux.Resources
	if c := r.CPU; c != nil {
		if c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
			q, p := uint64(*c.Quota), *c.Period
			cpus = int((q + p - 1) / p)
		}
		if c.Cpus != "" {
			highest, err := highestCPU(c.Cpus)
			if err != nil {
				return 0, 0, fmt.Errorf("linux.resources.cpu.cpus %q: %w", c.Cpus, err)
			}
			cpus = max(cpus, highest+1)
		}
	}
	if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		const miB = 1 << 20
		memoryMiB = int((*m.Limit + miB - 1) / miB)
	}
	return cpus, memoryMiB, nil
}

// highestCPU returns the highest CPU number of a cpuset list such as "0-3,6".
func highestCPU(list string) (int, error) {
	highest := -1
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return 0, fmt.Errorf("bad cpu list element %q: %w", part, errdefs.ErrInvalidArgument)
		}
		highest = max(highest, b)
	}
	return highest, nil
}
