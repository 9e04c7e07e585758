//go:build integration

package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/capability"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
)

// TestVMContainerSteps is the measuring tool behind docs/performance.md's breakdown of
// the container path in the guest: a VM booted with runv.trace=1 and warmed as a pooled VM
// is, then RUNV_STEPS containers running `true` (created, started, waited for, removed)
// and as many execs of `true` into a running container, each logged by the agent as one
// TRACE line with the time of its steps; and the floors: bench/guestfloor run in a
// privileged container of the same guest. It checks that every container and exec ran and
// exited 0, and prints the lines (-v).
//
//	RUNV_STEPS=5 go test -tags integration -run ContainerSteps -v ./agent/
//
// With it, QEMU's CPU time per phase (boot to READY, STARTPOD, and the first container's
// NEWCONTAINER, STARTCONTAINER and exit), and with RUNV_QEMU_ARGS="-d in_asm -D FILE" the
// blocks QEMU translated in each: what a cold guest (RUNV_STEPS_WARMUP=0) pays is mostly
// translation (docs/performance.md, "Direct boot, stop 12").
//
// RUNV_STEPS_CRUN=1 also times crun in the guest, RUNV_STEPS_TRIM=masked,sys,... interleaves
// containers of a trimmed spec (trimSpec), RUNV_STEPS_CMDLINE adds kernel parameters,
// RUNV_STEPS_RAW=1 prints every TRACE line, RUNV_STEPS_WARMUP=<n> sets the number of
// warm-ups before the pod (default 1+RUNV_STEPS): 0 is a cold-booted guest's first
// container (what a direct boot and a template clone pay), 1 a pooled VM's.
func TestVMContainerSteps(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("RUNV_STEPS"))
	if n <= 0 {
		t.Skip("a measurement, not a check: set RUNV_STEPS=<containers and execs to time>")
	}
	v := bootVM(t, vmOptions{cmdline: "runv.trace=1 " + os.Getenv("RUNV_STEPS_CMDLINE")})
	floorRootfs, floorSpec := v.busyboxContainer("floor", "/floor", "-n", "10")
	build := exec.Command("go", "build", "-o", filepath.Join(v.share, floorRootfs, "floor"), "../bench/guestfloor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build guestfloor: %v\n%s", err, out)
	}
	if agentPath != "" {
		data, err := os.ReadFile(agentPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(v.share, floorRootfs, "agent"), data, 0o755); err != nil {
			t.Fatal(err)
		}
		floorSpec.Process.Args = append(floorSpec.Process.Args, "-agent", "/agent")
	}
	privileged(floorSpec)
	if os.Getenv("RUNV_STEPS_CRUN") != "" {
		addCrun(t, filepath.Join(v.share, floorRootfs))
		floorSpec.Process.Args = append(floorSpec.Process.Args, "-crun", "/crun")
	}
	rootfs, spec := v.busyboxContainer("c", "true")
	// RUNV_STEPS_TRIM: every other container runs a spec without those parts, so that the
	// two are compared in one VM under the same load (their steps print as NEWCONTAINER-trimmed).
	trim := os.Getenv("RUNV_STEPS_TRIM")
	var trimmed specs.Spec
	if b, err := json.Marshal(spec); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &trimmed); err != nil {
		t.Fatal(err)
	}
	trimSpec(t, &trimmed, trim)
	v.event(agentproto.MsgReady)
	phases := newQEMUPhases(v)
	phases.mark("boot to READY")
	// The first warm-up is what a pooled VM gets; the others time a container whose rootfs
	// is a guest tmpfs, against the 9p rootfs of the pod's containers below.
	warmups := 1 + n
	if w := os.Getenv("RUNV_STEPS_WARMUP"); w != "" {
		var err error
		if warmups, err = strconv.Atoi(w); err != nil || warmups < 0 {
			t.Fatalf("RUNV_STEPS_WARMUP=%q: want a number of warm-ups, 0 or more", w)
		}
	}
	for i := 0; i < warmups; i++ {
		var w agentproto.Warmup
		// As the pool's holder does: the share is mounted ahead of the pod.
		v.mustCall(agentproto.MsgWarmup, agentproto.WarmupRequest{ShareTag: agentproto.ShareTag}, &w)
		t.Logf("warm-up container: created in %d ms, gone after %d ms", w.CreateMillis, w.TotalMillis)
	}
	v.startPod("steps")
	phases.mark("STARTPOD")

	for i := 0; i < n; i++ {
		id := "c" + strconv.Itoa(i)
		if i == 0 {
			runToExit(t, v, id, spec, rootfs, phases)
			phases.report(t)
		} else {
			runToExit(t, v, id, spec, rootfs, nil)
		}
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: id}, nil)
		if trim != "" {
			id := "trimmed" + strconv.Itoa(i)
			runToExit(t, v, id, &trimmed, rootfs, nil)
			v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: id}, nil)
		}
	}
	sleeper := *spec
	sp := *spec.Process
	sp.Args = []string{"sleep", "1000"}
	sleeper.Process = &sp
	if _, _, err := v.newContainer("s", &sleeper, rootfs, true); err != nil {
		t.Fatalf("NEWCONTAINER s: %v", err)
	}
	v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "s"}, nil)
	// Host-side figures of an exec: EXECCMD sent until its ACK, and until its PROCESSEXIT
	// (the program, busybox's true from the 9p rootfs, ran and exited); and the floor of
	// any request, a PING, which the agent answers at once.
	var acked, exited, pings []float64
	// RUNV_STEPS_HINT=1: the execs carry the program hint the pod daemon would send
	// (busybox's true is /bin/true in the test's rootfs).
	if os.Getenv("RUNV_STEPS_HINT") != "" {
		v.execHint = "/bin/true"
	}
	for i := 0; i < n; i++ {
		id := "e" + strconv.Itoa(i)
		start := time.Now()
		hp, err := v.exec("s", id, execProcess(spec, "true"), 0, 0)
		if err != nil {
			t.Fatalf("EXECCMD %s: %v", id, err)
		}
		acked = append(acked, ms(time.Since(start)))
		v.output(hp.stdout)
		if e := v.exitOf("s", id); e.ExitCode != 0 || e.Error != "" {
			t.Fatalf("exec %s: %+v", id, e)
		}
		exited = append(exited, ms(time.Since(start)))
		start = time.Now()
		v.mustCall(agentproto.MsgPing, nil, nil)
		pings = append(pings, ms(time.Since(start)))
	}
	t.Logf("exec of true, seen from the host (median of %d): EXECCMD until ACK %.1f ms, until PROCESSEXIT %.1f ms; PING round trip %.2f ms",
		n, median(acked), median(exited), median(pings))
	out := runToExit(t, v, "floor", floorSpec, floorRootfs, nil)
	destroy(t, v)
	traces := map[string][]string{}
	v.mu.Lock()
	for _, l := range v.console {
		// The privileged floor container is not one of the measured kind.
		if i := strings.Index(l.text, "TRACE "); i >= 0 && !strings.Contains(l.text[:i], " ctr=floor") {
			line := l.text[i+len("TRACE "):]
			op, _, _ := strings.Cut(line, ":")
			if strings.Contains(l.text[:i], " ctr=trimmed") {
				op += "-trimmed"
			}
			switch {
			case op != "EXECCMD":
			case strings.Contains(line, "request sent to the exec server"):
				op = "EXECCMD-server"
			case !strings.Contains(line, "helper started"):
				op = "EXECCMD-libcontainer"
			}
			if (op == "NEWCONTAINER" || op == "WARMUP") && !strings.Contains(line, "engine: cgroup made") {
				op += "-libcontainer"
			}
			traces[op] = append(traces[op], line)
			if testing.Verbose() && os.Getenv("RUNV_STEPS_RAW") != "" {
				t.Log(line)
			}
		}
	}
	v.mu.Unlock()
	// The first of each is the cold one (the first WARMUP's container, the first
	// container of the pod): left out of the medians, shown on its own.
	ops := []string{"WARMUP", "WARMUP-libcontainer", "STARTPOD", "NEWCONTAINER", "NEWCONTAINER-libcontainer", "STARTCONTAINER", "EXECCMD", "EXECCMD-server", "EXECCMD-libcontainer"}
	if trim != "" {
		ops = append(ops, "NEWCONTAINER-trimmed", "STARTCONTAINER-trimmed")
	}
	for _, op := range ops {
		if len(traces[op]) == 0 {
			continue
		}
		t.Logf("%s (%d traced), median of the later ones [the first]:\n%s", op, len(traces[op]), stepTable(op, traces[op]))
	}
	// Every exec goes through the exec helper unless the guest was told otherwise, and each
	// warm-up execs once through it.
	// (runv.exec=oneshot: through the one-shot helper; else through the container's exec
	// server, which the first exec starts).
	if cmdline := os.Getenv("RUNV_STEPS_CMDLINE"); !strings.Contains(cmdline, "runv.exec=libcontainer") {
		want := "EXECCMD-server"
		if strings.Contains(cmdline, "runv.exec=oneshot") {
			want = "EXECCMD"
		}
		if len(traces[want]) != n {
			t.Errorf("%d of %d execs went through the container's exec server, %d through the one-shot helper, want all %s", len(traces["EXECCMD-server"]), n, len(traces["EXECCMD"]), want)
		}
		for _, l := range traces["WARMUP"] {
			if !strings.Contains(l, "warm-up exec done") {
				t.Errorf("a warm-up without its exec through the helper: %s", l)
			}
		}
	}
	// Every container (warm-ups included) is made by the create engine unless the guest was
	// told otherwise.
	if cl := os.Getenv("RUNV_STEPS_CMDLINE"); !strings.Contains(cl, "=libcontainer") {
		for _, op := range []string{"WARMUP", "NEWCONTAINER"} {
			for _, l := range traces[op] {
				if !strings.Contains(l, "engine: cgroup made") || !strings.Contains(l, "init: pivot_root") {
					t.Errorf("a %s not made by the create engine: %s", op, l)
				}
			}
		}
	}
	t.Logf("floors:\n%s", out)
	if !strings.Contains(out, "FLOOR pivot_root") {
		t.Errorf("guestfloor did not finish: %q", out)
	}
	// With jiffies every figure above is a multiple of 4 ms and guest time runs slow
	// (hypervisor/qemu: tsc=reliable).
	if !strings.Contains(out, "clocksource: tsc") {
		t.Errorf("the guest's clocksource is not the TSC: %q", out)
	}
}

// runToExit creates and starts a container and returns its output once its init exited 0.
func runToExit(t *testing.T, v *testVM, id string, spec *specs.Spec, rootfs string, phases *qemuPhases) string {
	t.Helper()
	hp, _, err := v.newContainer(id, spec, rootfs, true)
	if err != nil {
		t.Fatalf("NEWCONTAINER %s: %v", id, err)
	}
	phases.mark("NEWCONTAINER " + id)
	v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: id}, nil)
	phases.mark("STARTCONTAINER " + id)
	out := v.output(hp.stdout)
	errout := v.output(hp.errout)
	if e := v.exitOf(id, agentproto.InitProcessID); e.ExitCode != 0 || e.Error != "" {
		t.Fatalf("container %s: exit %+v, stdout %q, stderr %q", id, e, out, errout)
	}
	phases.mark("exit of " + id)
	return out
}

// qemuPhases records, at the end of each phase, QEMU's CPU time (all its threads) and the
// size of its log, when RUNV_QEMU_ARGS gave it one with -D (QEMU writes a block's entry
// before it runs the block, so once the guest answered, the phase's blocks are in it).
type qemuPhases struct {
	pid     int
	logPath string
	marks   []qemuMark
}

type qemuMark struct {
	phase   string
	cpu     time.Duration
	logSize int64
}

func newQEMUPhases(v *testVM) *qemuPhases {
	p := &qemuPhases{pid: v.cmd.Process.Pid}
	args := strings.Fields(os.Getenv("RUNV_QEMU_ARGS"))
	if i := slices.Index(args, "-D"); i >= 0 && i+1 < len(args) {
		p.logPath = args[i+1]
	}
	return p
}

func (p *qemuPhases) mark(phase string) {
	if p == nil {
		return
	}
	m := qemuMark{phase: phase}
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(p.pid) + "/task/*/schedstat")
	for _, f := range tasks {
		if b, err := os.ReadFile(f); err == nil {
			if fields := strings.Fields(string(b)); len(fields) > 0 {
				ns, _ := strconv.ParseInt(fields[0], 10, 64)
				m.cpu += time.Duration(ns)
			}
		}
	}
	if fi, err := os.Stat(p.logPath); err == nil {
		m.logSize = fi.Size()
	}
	p.marks = append(p.marks, m)
}

// report prints each phase's QEMU CPU time and, with a log of -d in_asm, the blocks
// translated in it.
func (p *qemuPhases) report(t *testing.T) {
	var log []byte
	if p.logPath != "" {
		var err error
		if log, err = os.ReadFile(p.logPath); err != nil {
			t.Fatalf("QEMU's log: %v", err)
		}
	}
	var b strings.Builder
	var prev qemuMark
	for _, m := range p.marks {
		fmt.Fprintf(&b, "  %-22s QEMU CPU %7.1f ms", m.phase, ms(m.cpu-prev.cpu))
		if log != nil && m.logSize <= int64(len(log)) {
			fmt.Fprintf(&b, "   blocks translated %6d (log bytes %d-%d)", bytes.Count(log[prev.logSize:m.logSize], []byte("\nIN:")), prev.logSize, m.logSize)
		}
		b.WriteString("\n")
		prev = m
	}
	t.Logf("the first container's phases, QEMU's side:\n%s", b.String())
}

// privileged gives a spec every capability and no seccomp, masked or read-only paths, as
// `docker run --privileged` does: guestfloor mounts, unshares and pivots.
func privileged(s *specs.Spec) {
	var all []string
	for _, c := range capability.ListKnown() {
		all = append(all, "CAP_"+strings.ToUpper(c.String()))
	}
	caps := s.Process.Capabilities
	caps.Bounding, caps.Effective, caps.Permitted = all, all, all
	s.Linux.Seccomp = nil
	s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
	s.Root.Readonly = false
}

// traceSegments are the steps of docs/performance.md's breakdown: each ends at the first
// trace mark containing its marker (after the previous step's mark).
var traceSegments = map[string][][2]string{
	// The create engine (createengine_linux.go): the agent's marks, then the init's own.
	"NEWCONTAINER": {
		{"decode, spec adjustments, sysctls, specconv, stdio streams", "stdio set up"},
		{"cgroup Apply (mkdir, subtree_control)", "engine: cgroup made"},
		{"the helper's request (the seccomp program compiled once per container)", "engine: request built"},
		{"fork+exec of the helper into the cgroup (CLONE_INTO_CGROUP) and the new namespaces: the init", "helper started"},
		{"init: request, rlimits, its cgroup namespace", "init: in its namespaces"},
		{"init: keyring, root propagation, the rootfs bound on itself", "init: rootfs bound"},
		{"init: the config's mounts", "init: mounts"},
		{"init: /dev (device nodes, ptmx, symlinks)", "init: /dev"},
		{"init: pivot_root, old root detached, /dev/null reopened", "init: pivot_root"},
		{"init: read-only remounts, hostname, sysctls, read-only and masked paths", "init: read-only and masked paths"},
		{"init: no_new_privs, seccomp, user, capabilities, program looked up; ready", "init: process set up"},
		{"cgroup Set (resources, device eBPF program)", "engine: cgroup resources set"},
		{"stdio started, ACK written (the pod's first: its namespaces pinned)", "acked"},
	},
	"WARMUP": {
		{"spec, cgroup Apply", "engine: cgroup made"},
		{"request, helper (the init)", "init: in its namespaces"},
		{"init: mounts (rootfs on the share when WARMUP mounts it, else a guest tmpfs)", "init: mounts"},
		{"init: /dev, pivot_root", "init: pivot_root"},
		{"init: paths, process set-up", "init: process set up"},
		{"cgroup Set", "engine: cgroup resources set"},
		{"exec through the helper into the created container", "warm-up exec done"},
		{"start, exec of the program", "container started"},
		{"JSON of a pod's other first requests (decoders cached)", "payloads decoded"},
	},
	"NEWCONTAINER-libcontainer": {
		{"decode, spec adjustments, sysctls, specconv, libcontainer.Create (state dir, cgroup manager)", "libcontainer.Create"},
		{"stdio streams, exeseal (read-only overlay of the agent binary)", "runc exeseal: using /proc/self/exe clone"},
		{"fork+exec of the agent binary as runc init, until nsexec's constructor", "=> nsexec container setup"},
		{"parent: cgroup Apply (mkdir, cgroup.procs), bootstrap data; child waits", "~> nsexec stage-0"},
		{"nsexec stages 0-1-2 (clone, unshare of the namespaces)", "booting up go runtime"},
		{"Go runtime start and package inits of runc init", "child process in init()"},
		{"rootfs: mounts, /dev, devices, up to the hooks sync", "writing sync type:procHooks"},
		{"hooks/ready/run syncs: parent rlimits, state.json, cgroup Set", "read sync type:procRun"},
		{"pivot_root, remounts, hostname, caps, seccomp, until the exec fifo wait", "init: about to wait on exec fifo"},
		{"Start returns, ACK written", "acked"},
	},
	"WARMUP-libcontainer": {
		{"spec, libcontainer.Create", "libcontainer.Create"},
		{"exeseal", "runc exeseal: using /proc/self/exe clone"},
		{"fork+exec of the agent binary as runc init", "=> nsexec container setup"},
		{"parent: cgroup Apply, bootstrap data", "~> nsexec stage-0"},
		{"nsexec stages", "booting up go runtime"},
		{"Go runtime start and package inits", "child process in init()"},
		{"rootfs (a guest tmpfs): mounts, /dev, devices", "writing sync type:procHooks"},
		{"syncs", "read sync type:procRun"},
		{"pivot_root .. exec fifo wait", "init: about to wait on exec fifo"},
		{"exec of the program", "container started"},
	},
	"STARTPOD": {
		{"decode", "decoded"},
		{"settimeofday", "clock set"},
		{"entropy (RNDADDENTROPY, reseed)", "entropy added"},
		{"hostname, resolv.conf", "hostname, resolv.conf"},
		{"9p mount of the pod share and chmod of its root (none: mounted by WARMUP)", "9p share mounted"},
	},
	"STARTCONTAINER": {
		{"status", "status"},
		{"init released (exec fifo read; engine: start byte, exec seen on the report pipe)", "exec fifo read"},
		{"exec of the container's program (from 9p), seen in /proc", "program exec'd"},
	},
	"EXECCMD": {
		{"decode, stdio, helper request (seccomp program compiled once per container)", "helper request built"},
		{"open the init's namespaces", "namespaces opened"},
		{"fork+exec of the helper into the cgroup (CLONE_INTO_CGROUP)", "helper started"},
		{"helper: request, rlimits, setns, fork; pid reported", "helper forked the process"},
		{"child: session, keyring", "init: in its namespaces"},
		{"child: cwd, HOME", "init: cwd, HOME"},
		{"child: bounding set, user, groups, capabilities", "init: user, groups, capabilities"},
		{"child: program looked up in PATH", "init: program found"},
		{"child: seccomp, execve of the program", "helper: program exec'd"},
		{"program exec'd, seen in /proc", "program exec'd"},
		{"ACK written", "acked"},
	},
	// EXECCMD through the container's exec server (the first exec starts it).
	"EXECCMD-server": {
		{"decode, stdio, helper request (seccomp program compiled once per container)", "helper request built"},
		{"report pipe, cgroup and stdio descriptors, request sent to the server", "request sent to the exec server"},
		{"server: fork into the cgroup; pid reported", "exec server forked the process"},
		{"process: descriptors, request, rlimits", "exec: descriptors, request, rlimits"},
		{"process: session, keyring", "init: in its namespaces"},
		{"process: cwd, HOME", "init: cwd, HOME"},
		{"process: bounding set, user, groups, capabilities", "init: user, groups, capabilities"},
		{"process: program looked up in PATH", "init: program found"},
		{"process: seccomp, execve of the program", "helper: program exec'd"},
		{"program exec'd, seen in /proc", "program exec'd"},
		{"ACK written", "acked"},
	},
	// EXECCMD through libcontainer (runv.exec=libcontainer).
	"EXECCMD-libcontainer": {
		{"decode, stdio, exeseal, cgroup fd", "using CLONE_INTO_CGROUP"},
		{"fork+exec of the agent binary as runc init, until nsexec's constructor", "=> nsexec container setup"},
		{"nsexec stages with setns into the 4 namespaces", "booting up go runtime"},
		{"Go runtime start and package inits of runc init", "child process in init()"},
		{"setns init: ready/run syncs, caps, seccomp, until its exec", "setns_init: about to exec"},
		{"exec of the program (from 9p), seen in /proc", "program exec'd"},
		{"ACK written", "acked"},
	},
}

// stepTable turns TRACE lines of one operation into per-step durations: the median over
// all but the first line, and the first line's.
func stepTable(op string, lines []string) string {
	segs := traceSegments[strings.TrimSuffix(strings.TrimSuffix(op, "-trimmed"), "-libcontainer")]
	if strings.Contains(op, "-libcontainer") && traceSegments[op] != nil {
		segs = traceSegments[op]
	}
	durs := make([][]float64, len(segs))
	first := make([]float64, len(segs))
	for li, line := range lines {
		_, rest, _ := strings.Cut(line, ": ")
		prev, si := 0.0, 0
		for _, mark := range strings.Split(rest, " | ") {
			at, what, ok := strings.Cut(strings.TrimSpace(mark), " ")
			ms, err := strconv.ParseFloat(at, 64)
			if !ok || err != nil || si >= len(segs) || !strings.Contains(what, segs[si][1]) {
				continue
			}
			if li == 0 {
				first[si] = ms - prev
			} else {
				durs[si] = append(durs[si], ms-prev)
			}
			prev = ms
			si++
		}
	}
	var b strings.Builder
	total, totalFirst := 0.0, 0.0
	for i, s := range segs {
		m := median(durs[i])
		total += m
		totalFirst += first[i]
		fmt.Fprintf(&b, "  %7.1f ms [%6.1f]  %s\n", m, first[i], s[0])
	}
	fmt.Fprintf(&b, "  %7.1f ms [%6.1f]  sum of the medians [the first]\n", total, totalFirst)
	return b.String()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// trimSpec drops parts of the spec named in a comma-separated list, to find what a step's
// time depends on: masked (masked and read-only paths), sys (the /sys and cgroup mounts),
// devices (linux.devices and the device cgroup rules), mqueue, pts, shm.
func trimSpec(t *testing.T, s *specs.Spec, what string) {
	for _, w := range strings.Split(what, ",") {
		switch w {
		case "":
		case "masked":
			s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
		case "devices":
			s.Linux.Devices = nil
			if s.Linux.Resources != nil {
				s.Linux.Resources.Devices = nil
			}
		case "sys", "mqueue", "pts", "shm":
			dest := map[string][]string{"sys": {"/sys", "/sys/fs/cgroup"}, "mqueue": {"/dev/mqueue"}, "pts": {"/dev/pts"}, "shm": {"/dev/shm"}}[w]
			s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return slices.Contains(dest, m.Destination) })
		default:
			t.Fatalf("RUNV_STEPS_TRIM: unknown %q", w)
		}
	}
}

// addCrun puts the host's crun (with the shared libraries it links) into a rootfs, with
// two bundles under /crun (rootfs, true, sleep) for guestfloor -crun: crun in the same
// guest, against libcontainer's figures. RUNV_STEPS_CRUN=1 asks for it.
func addCrun(t *testing.T, root string) {
	crun, err := exec.LookPath("crun")
	if err != nil {
		t.Fatalf("RUNV_STEPS_CRUN: %v (apt-get install crun)", err)
	}
	out, err := exec.Command("ldd", crun).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", crun, err)
	}
	files := []string{crun}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			files = append(files, f)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	makeRootfs(t, filepath.Join(root, "crun/rootfs"))
	if err := os.WriteFile(filepath.Join(root, "crun/files"), []byte(strings.Join(files, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{"true": {"true"}, "sleep": {"sleep", "100000"}} {
		s := specconv.Example()
		s.Process.Terminal = false
		s.Process.Args = args
		s.Version = "1.0.2" // what Debian 12's crun 1.8 knows
		s.Root.Path = "/crun/rootfs"
		s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.NetworkNamespace })
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(root, "crun", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
