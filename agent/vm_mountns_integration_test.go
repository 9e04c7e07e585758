//go:build integration

package agent

import (
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
)

// A container's mounts go once it exited, without its removal, as with runc when its last
// process exits: the agent holds a container init's mount namespace only until it has
// reported the exit (pinMountNS). The memory the container put in a tmpfs of its own is
// then the guest's again.
func TestVMExitedContainerReleasesItsMounts(t *testing.T) {
	v := bootVM(t, vmOptions{})
	const fillMiB = 16
	fillRootfs, fill := v.busyboxContainer("fill", "sh", "-c",
		"dd if=/dev/zero of=/scratch/f bs=1M count="+strconv.Itoa(fillMiB)+" 2>/dev/null && grep ^Shmem: /proc/meminfo")
	fill.Mounts = append(fill.Mounts, specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"size=32m"}})
	watchRootfs, watch := v.busyboxContainer("watch", "sleep", "1000")
	v.event(agentproto.MsgReady)
	v.startPod("mounts")
	if _, _, err := v.newContainer("watch", watch, watchRootfs, true); err != nil {
		t.Fatalf("NEWCONTAINER watch: %v", err)
	}
	v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "watch"}, nil)
	execs := 0
	// shmemKiB is the guest's tmpfs memory (/proc/meminfo is the guest's in any container).
	shmemKiB := func() int {
		execs++
		id := "m" + strconv.Itoa(execs)
		hp, err := v.exec("watch", id, execProcess(watch, "grep", "^Shmem:", "/proc/meminfo"), 0, 0)
		if err != nil {
			t.Fatalf("EXECCMD %s: %v", id, err)
		}
		out := v.output(hp.stdout)
		if e := v.exitOf("watch", id); e.ExitCode != 0 {
			t.Fatalf("grep Shmem: exit %+v, output %q", e, out)
		}
		return parseShmem(t, out)
	}
	before := shmemKiB()
	during := parseShmem(t, runToExit(t, v, "fill", fill, fillRootfs, nil))
	if during-before < fillMiB*1024/2 {
		t.Fatalf("the container's %d MiB in its tmpfs do not show: Shmem %d KiB before it ran, %d KiB as it ended", fillMiB, before, during)
	}
	// The teardown follows the exit's report: poll for it, with a deadline for a loaded host.
	deadline := time.Now().Add(60 * time.Second)
	for {
		after := shmemKiB()
		if during-after > fillMiB*1024/2 {
			t.Logf("tmpfs memory: %d KiB before the container, %d KiB as it ended, %d KiB once it exited", before, during, after)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the exited container's tmpfs still holds its memory: Shmem %d KiB before it ran, %d KiB as it ended, %d KiB after its exit", before, during, after)
		}
	}
	destroy(t, v)
}

// parseShmem reads the KiB of a /proc/meminfo "Shmem:" line.
func parseShmem(t *testing.T, line string) int {
	t.Helper()
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "Shmem:" {
		t.Fatalf("unexpected meminfo line %q", line)
	}
	kib, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("unexpected meminfo line %q", line)
	}
	return kib
}
