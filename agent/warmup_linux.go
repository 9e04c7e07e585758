package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// WarmupArg is the argument with which the throwaway container of WARMUP runs this binary:
// main exits at once (IsWarmupNoop), after the Go runtime started, as a container's
// program would.
const WarmupArg = "runv-warmup-noop"

// IsWarmupNoop reports whether argv is the warm-up container's process.
func IsWarmupNoop(args []string) bool { return len(args) > 1 && args[1] == WarmupArg }

// warmupDir holds the throwaway container's rootfs when WARMUP mounts no share: /run is a
// tmpfs of the guest. With the share mounted ahead (a pooled VM), the rootfs is in the
// share, shareWarmupDir, as a pod's containers' are.
const (
	warmupDir      = "/run/runv/warmup"
	shareWarmupDir = agentproto.SharePath + "/" + agentproto.WarmupShareDir
	warmupID       = "runv-warmup"
)

// warmupPATH is the warm-up process's PATH: runc's default, whose directories its rootfs
// does not have, then its root, where its program is: the init's PATH search goes through
// lookups that miss and one that finds, as a pod's container's does.
const warmupPATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/"

// warmup handles WARMUP: it runs one container through the path every pod's containers
// take (spec adjustment, libcontainer create and start, runc init re-exec with nsexec, the
// namespaces, mounts and pivot_root, exec, wait, destroy) and then removes every trace.
// Under TCG a guest's first container costs two to three times a later one, because QEMU
// translates the kernel's and the agent's code as it first runs; a pooled VM warmed this
// way hands that cost to nobody. It is only allowed before STARTPOD: the container runs
// outside any pod, and a pod's containers must not see it.
func (a *Agent) warmup(_ context.Context, req *Request) (any, error) {
	var wr agentproto.WarmupRequest
	if len(req.Frame.Data) > 0 && string(req.Frame.Data) != "null" {
		if err := req.Decode(&wr); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	switch {
	case a.pod != nil:
		a.mu.Unlock()
		return nil, errorf(agentproto.KindState, "WARMUP after STARTPOD: warm-up is for VMs that have no pod yet")
	case a.destroying:
		a.mu.Unlock()
		return nil, errorf(agentproto.KindState, "the pod is being destroyed")
	case a.creating[warmupID]:
		a.mu.Unlock()
		return nil, errorf(agentproto.KindState, "a warm-up is already running")
	}
	a.creating[warmupID] = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.creating, warmupID)
		a.mu.Unlock()
	}()

	tr := a.trace.begin("WARMUP")
	defer a.trace.end(tr, a.log)
	res, err := a.runWarmup(wr, tr)
	if err != nil {
		return nil, err
	}
	// After runWarmup's own clean-up (the container destroyed, its rootfs removed), whose
	// deferred work is part of what settles.
	if wr.Settle {
		waited, pending := settle(snapshotSettleChecks(), settleTimeout, settlePoll)
		res.SettleMillis, res.Unsettled = waited.Milliseconds(), pending
		tr.mark("settled")
		if pending != "" {
			a.log.Errorf("warm-up: still pending after %d ms: %s", res.SettleMillis, pending)
		}
	}
	return *res, nil
}

// runWarmup runs the warm-up wr asks for and cleans up after it.
func (a *Agent) runWarmup(wr agentproto.WarmupRequest, tr *stepTrace) (*agentproto.Warmup, error) {
	start := time.Now()
	if len(wr.Entropy) > 0 {
		if err := addEntropy(wr.Entropy); err != nil {
			return nil, err
		}
		tr.mark("entropy added")
	}
	// The share first, so that the container's rootfs is on it: the guest's 9p client then
	// runs, before the pod, what a pod's first container asks of it (the mountpoints' and
	// the PATH's lookups, /etc/passwd read, attributes), which made that container's mounts
	// and process set-up ~5 ms each slower than a later container's.
	dir := warmupDir
	if wr.ShareTag != "" {
		if err := a.mountShareAhead(wr.ShareTag); err != nil {
			return nil, err
		}
		dir = shareWarmupDir
	}
	if wr.Scope == agentproto.WarmupPod {
		if err := warmupPayloads(); err != nil {
			return nil, err
		}
		res := agentproto.Warmup{TotalMillis: time.Since(start).Milliseconds()}
		a.log.Infof("warm-up of the pod's start: %d ms", res.TotalMillis)
		return &res, nil
	}
	rootfs := filepath.Join(dir, "rootfs")
	hostMade := wr.HostRootfs && dir == shareWarmupDir
	program := a.warmupProgram(wr.Scope)
	if err := prepareWarmupRoot(rootfs, hostMade, program); err != nil {
		removeWarmupRoot(dir, hostMade)
		return nil, err
	}
	defer func() {
		removeWarmupRoot(dir, hostMade)
		tr.mark("rootfs removed")
	}()

	spec := specconv.Example() // runc's default config, as `runc spec` writes it
	spec.Process.Terminal = false
	spec.Process.Args = []string{"init", WarmupArg} // found in PATH (warmupPATH)
	spec.Process.Env = []string{warmupPATH, "TERM=xterm"}
	spec.Root.Readonly = true
	spec.Hostname = warmupID
	spec, err := asReceived(spec)
	if err != nil {
		return nil, err
	}
	tr.mark("spec decoded")
	gs, err := convert.AdjustSpec(spec, convert.GuestSpec{ContainerID: warmupID, ShareDir: dir, Rootfs: "rootfs"})
	if err != nil {
		return nil, err
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: warmupID, Spec: gs})
	if err != nil {
		return nil, fmt.Errorf("warm-up: spec: %w", err)
	}
	// The engine every pod's containers get (newEngine decides the same way).
	c := &container{id: warmupID, log: a.log.with("ctr", warmupID), spec: gs}
	lc, err := a.newEngine(c, cfg, gs.Process, tr)
	if err != nil {
		return nil, fmt.Errorf("warm-up: create: %w", err)
	}
	defer func() {
		if err := lc.Destroy(); err != nil {
			a.log.Errorf("warm-up: destroy: %v", err)
		}
		tr.mark("container destroyed")
	}()
	lp, _, err := newProcess(gs.Process, true)
	if err != nil {
		return nil, err
	}
	// No stdio: the process gets /dev/null.
	done := a.reaper.beginStart()
	err = lc.Start(lp)
	var handle procHandle
	pid := 0
	if err == nil {
		handle, pid = initHandle(lc, lp)
		// An exec into the created container, as a pod's execs go (the exec helper), so
		// that a pooled VM's first exec does not pay the translation of that path either.
		if wr.Scope == agentproto.WarmupFull {
			if werr := a.warmupExec(cfg, pid, tr); werr != nil {
				a.log.Errorf("warm-up: exec: %v", werr)
			}
		}
		err = lc.Exec()
	}
	tr.mark("container started")
	done(pid)
	if err != nil {
		if handle != nil {
			_ = handle.Signal(sigKill)
			_, _ = handle.wait()
			a.reaper.untrack(pid)
		}
		return nil, fmt.Errorf("warm-up: start: %w", err)
	}
	created := time.Since(start)
	_, err = handle.wait()
	a.reaper.untrack(pid)
	tr.mark("container exited")
	if err != nil {
		return nil, fmt.Errorf("warm-up: wait: %w", err)
	}
	if err := warmupPayloads(); err != nil {
		return nil, err
	}
	tr.mark("payloads decoded")
	res := agentproto.Warmup{CreateMillis: created.Milliseconds(), TotalMillis: time.Since(start).Milliseconds()}
	a.log.Infof("warm-up container ran: created in %d ms, gone after %d ms (scope: %q, program %s)", res.CreateMillis, res.TotalMillis, wr.Scope, program)
	if wr.Scope == agentproto.WarmupFull {
		netStart := time.Now()
		if err := warmupNetwork(); err != nil {
			return nil, err
		}
		tr.mark("network warmed")
		a.log.Infof("network warm-up: %d ms", time.Since(netStart).Milliseconds())
	}
	return &res, nil
}

// asReceived returns spec as a pod's container brings it: encoded in a NEWCONTAINER frame
// and decoded as newContainer decodes it. The first decode of a spec builds encoding/json's
// decoders of its types, and under TCG runs that code for the first time: 13.5 ms of a
// pooled VM's first NEWCONTAINER before the warm-up did it, 0.5 ms in later ones.
func asReceived(spec *specs.Spec) (*specs.Spec, error) {
	var m agentproto.Container
	if err := throughFrame(agentproto.MsgNewContainer, agentproto.Container{ID: warmupID, Rootfs: "rootfs", Spec: spec}, into(&m)); err != nil {
		return nil, fmt.Errorf("warm-up: the spec: %w", err)
	}
	return m.Spec, nil
}

// throughFrame encodes v in a frame of type t and decodes it with decode, as the agent's
// protocol does on either side.
func throughFrame(t agentproto.MsgType, v any, decode func(agentproto.ControlFrame) error) error {
	f, err := agentproto.Marshal(t, 1, v)
	if err != nil {
		return err
	}
	return decode(f)
}

// into decodes a frame's payload into out with the generic decoder.
func into(out any) func(agentproto.ControlFrame) error {
	return func(f agentproto.ControlFrame) error { return f.Unmarshal(out) }
}

// warmupPayloads encodes and decodes, once, the payloads of the other commands that start a
// pod and its first container (STARTPOD, STARTCONTAINER, SETUPNETWORK), of their replies
// and events, and the parts of a spec runc's example has not (seccomp, resources, sysctls,
// annotations): as asReceived, it builds encoding/json's encoders and decoders of those
// types, cached in the agent's heap, which a template's snapshot keeps for every clone (a
// clone's STARTPOD spent 10-16 ms decoding its Pod before).
func warmupPayloads() error {
	limit, shares, pids := int64(64<<20), uint64(1024), int64(100)
	for _, p := range []struct {
		t      agentproto.MsgType
		v      any
		decode func(agentproto.ControlFrame) error
	}{
		// STARTPOD's and NEWCONTAINER's payloads have decoders of their own (agentproto's
		// hand decoders; a NEWCONTAINER with the host's conversion, as a `runv run` of
		// runc's example spec sends it).
		{agentproto.MsgStartPod, agentproto.Pod{ID: warmupID, Hostname: warmupID, Entropy: make([]byte, 64), DNS: []string{"192.0.2.1"}, TimeUnixNano: 1},
			func(f agentproto.ControlFrame) error { _, err := f.UnmarshalPod(); return err }},
		{agentproto.MsgNewContainer, agentproto.Container{ID: warmupID, Rootfs: "rootfs",
			Spec:  &specs.Spec{Process: &specs.Process{Args: []string{"true"}, ConsoleSize: &specs.Box{Height: 1, Width: 1}}},
			IO:    agentproto.Stdio{Stdio: 1, Stderr: 2},
			Start: true,
			Converted: &agentproto.Converted{Fields: []byte{1}, Caps: []uint64{1}, CloneFlags: 1, CgroupPath: "/" + warmupID,
				DeviceRules: []*devices.Rule{{Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rwm", Allow: true}}, DeviceProgram: []byte{1}},
		}, func(f agentproto.ControlFrame) error { _, err := f.UnmarshalContainer(); return err }},
		{agentproto.MsgNewContainer, agentproto.ProcessStarted{Pid: 1}, into(&agentproto.ProcessStarted{})},
		{agentproto.MsgStartContainer, agentproto.ContainerRef{Container: warmupID}, into(&agentproto.ContainerRef{})},
		{agentproto.MsgProcessExit, agentproto.ProcessExit{Container: warmupID, Process: warmupID}, into(&agentproto.ProcessExit{})},
		{agentproto.MsgSetupNetwork, agentproto.Network{Interfaces: []agentproto.Interface{{Name: "eth0", Addresses: []string{"192.0.2.2/24"}}},
			Routes: []agentproto.Route{{Family: 4, Gateway: "192.0.2.1"}}}, into(&agentproto.Network{})},
		{agentproto.MsgNewContainer, specs.Spec{Annotations: map[string]string{"a": "b"}, Linux: &specs.Linux{
			Sysctl: map[string]string{"net.ipv4.ip_forward": "0"},
			Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Shares: &shares},
				Pids: &specs.LinuxPids{Limit: &pids}},
			Seccomp: &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Architectures: []specs.Arch{specs.ArchX86_64},
				Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActAllow,
					Args: []specs.LinuxSeccompArg{{Index: 0, Value: 1, Op: specs.OpEqualTo}}}}},
		}}, into(&specs.Spec{})},
	} {
		if err := throughFrame(p.t, p.v, p.decode); err != nil {
			return fmt.Errorf("warm-up: %s payload: %w", p.t, err)
		}
	}
	return nil
}

// warmupProgram is the binary the throwaway container runs (as its /init); it exits at
// once. A full warm-up runs this agent's binary (WarmupArg): its Go runtime's start in a
// new process warms kernel paths that a pod's first container takes too (8 ms of QEMU CPU
// of a pooled pod's `runv run`, docs/performance.md, "Bursts, stop 15"). A light one, the
// warm-up of a pool that ran dry, runs the exec helper instead, a small static C program
// that, run as a container's program, has no report channel and exits (126) before doing
// anything: the Go runtime's start was ~110 ms of QEMU's translation in a clone's light
// warm-up (~290 ms), which is what decides whether warm-ups keep up with pods started
// back to back. Without the helper (runv.exec=libcontainer), the agent's binary.
func (a *Agent) warmupProgram(scope agentproto.WarmupScope) string {
	if scope == agentproto.WarmupContainer && a.execHelper != "" {
		return a.execHelper
	}
	return "/init"
}

// prepareWarmupRoot makes a rootfs holding only the warm-up program, read-only, as /init
// (agentproto.MakeWarmupRootfs), unless the host made it (hostMade), and binds program
// there.
func prepareWarmupRoot(rootfs string, hostMade bool, program string) error {
	if !hostMade {
		if err := agentproto.MakeWarmupRootfs(rootfs); err != nil {
			return err
		}
	}
	if err := unix.Mount(program, filepath.Join(rootfs, "init"), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("warm-up: bind %s: %w", program, err)
	}
	return nil
}

// removeWarmupRoot unbinds the binary and removes what prepareWarmupRoot made under dir;
// the host removes what it made (hostMade).
func removeWarmupRoot(dir string, hostMade bool) {
	unix.Unmount(filepath.Join(dir, "rootfs", "init"), unix.MNT_DETACH)
	if !hostMade {
		os.RemoveAll(dir)
	}
}

// warmupExec runs the warm-up program once more, through the exec helper, in the warm-up
// container whose init (pid) is created. The caller holds the reaper's start bracket.
func (a *Agent) warmupExec(cfg *configs.Config, pid int, tr *stepTrace) error {
	if a.execHelper == "" {
		return nil
	}
	last, err := guestLastCap()
	if err != nil {
		return err
	}
	req := &convert.ExecRequest{Caps: convert.CapSetsOf(cfg.Capabilities), LastCap: last, NoNewPrivs: cfg.NoNewPrivileges, Cwd: "/",
		Args: []string{"/init", WarmupArg}, Env: []string{"PATH=/"}, Keyring: "_ses." + warmupID}
	var namespaces []nsFile
	defer func() {
		for _, ns := range namespaces {
			ns.f.Close()
		}
	}()
	for _, t := range configs.NamespaceTypes() {
		if !cfg.Namespaces.Contains(t) {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, configs.NsName(t)))
		if err != nil {
			return err
		}
		namespaces = append(namespaces, nsFile{nstype: uint32((&configs.Namespace{Type: t}).Syscall()), f: f})
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return err
	}
	dir := filepath.Join("/sys/fs/cgroup", strings.TrimPrefix(strings.TrimSpace(string(b)), "0::"))
	proc, _, err := runExecHelper(a.execHelper, req, [3]*os.File{}, namespaces, nil, nil, []string{dir}, tr)
	if err != nil {
		return err
	}
	_, err = proc.wait()
	tr.mark("warm-up exec done")
	return err
}
