//go:build integration

package agent

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// TestVMUnameContainer is the end-to-end proof: boot, handshake, STARTPOD, NEWCONTAINER +
// STARTCONTAINER of a busybox container running `uname -r`, its output from the stream
// channel, its exit, removal and DESTROYPOD.
func TestVMUnameContainer(t *testing.T) {
	v := bootVM(t, vmOptions{})
	// The bundle is ready before the VM is needed, as on a real host: build it while the
	// guest boots.
	rootfs, spec := v.busyboxContainer("c1", "uname", "-r")
	ready := v.event(agentproto.MsgReady)
	t.Logf("TIMING qemu start → READY: %.3f s", ready.at.Seconds())

	var ver agentproto.VersionInfo
	v.mustCall(agentproto.MsgGetVersion, nil, &ver)
	if ver.Version != agentproto.Version {
		t.Fatalf("agent speaks version %d, want %d", ver.Version, agentproto.Version)
	}
	v.startPod("pod1")
	podAt := v.since()

	t0 := v.since()
	hp, pid, err := v.newContainer("c1", spec, rootfs, true)
	if err != nil {
		t.Fatalf("NEWCONTAINER: %v", err)
	}
	t1 := v.since()
	v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "c1"}, nil)
	t2 := v.since()
	out := v.output(hp.stdout)
	first := <-hp.firstOutput
	exit := v.exitOf("c1", agentproto.InitProcessID)
	t.Logf("container pid %d printed %q, exit %+v", pid, out, exit)
	if !strings.HasPrefix(out, "6.") || exit.ExitCode != 0 || exit.Error != "" {
		t.Fatalf("uname -r: output %q exit %+v", out, exit)
	}
	if e := v.output(hp.errout); e != "" {
		t.Errorf("stderr %q", e)
	}
	t.Logf("TIMING qemu start → container output: %.3f s (READY %.3f, STARTPOD done %.3f, NEWCONTAINER %.0f ms, STARTCONTAINER %.0f ms, first byte %.0f ms after STARTCONTAINER was sent)",
		first.Seconds(), ready.at.Seconds(), podAt.Seconds(), (t1-t0).Seconds()*1000, (t2-t1).Seconds()*1000, (first-t1).Seconds()*1000)
	if d := exit.ExitCode; d != 0 {
		t.Fatal(d)
	}

	v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "c1"}, nil)
	if err := v.call(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "c1"}, nil); remoteKind(err) != agentproto.KindNotFound {
		t.Errorf("second remove: %v, want not-found", err)
	}
	destroy(t, v)
}

// destroy sends DESTROYPOD and checks the VM powers off by itself.
func destroy(t *testing.T, v *testVM) {
	t.Helper()
	start := v.since()
	v.mustCall(agentproto.MsgDestroyPod, nil, nil)
	if !v.waitExited(30 * time.Second) {
		t.Fatal("VM still running 30 s after DESTROYPOD's ACK")
	}
	t.Logf("TIMING DESTROYPOD → qemu exit: %.0f ms", (v.since()-start).Seconds()*1000)
}

// TestVMProcesses covers stdin, exec (pipes and terminal), signals, state errors, the
// not-executable mapping, pause/resume, stats and orphan reaping.
func TestVMProcesses(t *testing.T) {
	v := bootVM(t, vmOptions{})
	v.event(agentproto.MsgReady)

	// Unknown command: an ERROR, and the agent carries on.
	if err := v.call(agentproto.MsgType(4242), nil, nil); remoteKind(err) != agentproto.KindInvalid {
		t.Errorf("unknown command: %v", err)
	}
	// Containers need the pod first.
	rootfs, spec := v.busyboxContainer("early", "true")
	if _, _, err := v.newContainer("early", spec, rootfs, true); remoteKind(err) != agentproto.KindState {
		t.Errorf("NEWCONTAINER before STARTPOD: %v", err)
	}
	v.startPod("pod2")
	if err := v.call(agentproto.MsgStartPod, agentproto.Pod{ID: "again"}, nil); remoteKind(err) != agentproto.KindState {
		t.Errorf("second STARTPOD: %v", err)
	}

	t.Run("stdin", func(t *testing.T) {
		defer v.use(t)()
		rootfs, spec := v.busyboxContainer("cat", "sh", "-c", "cat; echo err >&2; cat /etc/resolv.conf; hostname")
		hp, _, err := v.newContainer("cat", spec, rootfs, false)
		if err != nil {
			t.Fatal(err)
		}
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "cat"}, nil)
		big := strings.Repeat("0123456789abcdef", 40<<10) // 640 KiB: several credit windows
		go func() {
			hp.stdio.Write([]byte(big))
			hp.stdio.CloseWrite()
		}()
		out := v.output(hp.stdout)
		if !strings.HasPrefix(out, big) || !strings.Contains(out, "nameserver 192.0.2.53") || !strings.HasSuffix(out, "cat\n") {
			t.Errorf("output: %d bytes, tail %q", len(out), out[max(0, len(out)-120):])
		}
		if e := v.output(hp.errout); e != "err\n" {
			t.Errorf("stderr %q", e)
		}
		if exit := v.exitOf("cat", agentproto.InitProcessID); exit.ExitCode != 0 {
			t.Errorf("exit %+v", exit)
		}
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "cat"}, nil)
	})

	t.Run("not-executable", func(t *testing.T) {
		defer v.use(t)()
		rootfs, spec := v.busyboxContainer("missing", "/bin/nosuch")
		_, _, err := v.newContainer("missing", spec, rootfs, true)
		if remoteKind(err) != agentproto.KindNotExecutable || !strings.Contains(err.Error(), "executable file not found") {
			t.Fatalf("missing executable: %v", err)
		}
		t.Logf("missing executable → %v", err)
		rootfs, spec = v.busyboxContainer("noexec", "/etc/passwd")
		_, _, err = v.newContainer("noexec", spec, rootfs, true)
		if remoteKind(err) != agentproto.KindNotExecutable || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("non-executable file: %v", err)
		}
		// The failed id is free again.
		rootfs, spec = v.busyboxContainer("missing", "true")
		hp, _, err := v.newContainer("missing", spec, rootfs, true)
		if err != nil {
			t.Fatalf("reuse of a failed id: %v", err)
		}
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "missing"}, nil)
		v.output(hp.stdout)
		v.exitOf("missing", agentproto.InitProcessID)
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "missing"}, nil)
	})

	// An exec goes through the exec helper: the container's seccomp profile (with a flag,
	// as podman's and docker's: libcontainer loads it with a raw seccomp(2), on a guest of
	// one vCPU), user, groups, capabilities and cwd reach the process.
	t.Run("exec-helper", func(t *testing.T) {
		defer v.use(t)()
		rootfs, spec := v.busyboxContainer("confined", "sleep", "1000")
		eperm := uint(syscall.EPERM)
		spec.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction: specs.ActAllow, Flags: []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagSpecAllow},
			Syscalls: []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno, ErrnoRet: &eperm}},
		}
		hp, _, err := v.newContainer("confined", spec, rootfs, true)
		if err != nil {
			t.Fatal(err)
		}
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "confined"}, nil)
		p := execProcess(spec, "sh", "-c", `echo "$(id -u):$(id -g) $(id -G) $(pwd) $HOME"; grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; mkdir /tmp/x || echo mkdir-refused`)
		p.User = specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{7}}
		p.Cwd = "/tmp"
		p.NoNewPrivileges = true
		p.Capabilities = &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}}
		ep, err := v.exec("confined", "e1", p, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		out := v.output(ep.stdout)
		for _, want := range []string{"1000:1001 1001 7 /tmp /\n", "Seccomp:\t2", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "mkdir-refused"} {
			if !strings.Contains(out, want) {
				t.Errorf("exec output %q lacks %q", out, want)
			}
		}
		if exit := v.exitOf("confined", "e1"); exit.ExitCode != 0 {
			t.Errorf("exec exit %+v", exit)
		}
		v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "confined", Process: agentproto.InitProcessID, Signal: int(syscall.SIGKILL)}, nil)
		v.output(hp.stdout)
		v.exitOf("confined", agentproto.InitProcessID)
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "confined"}, nil)
	})

	t.Run("exec-signal-pause", func(t *testing.T) {
		defer v.use(t)()
		rootfs, spec := v.busyboxContainer("sleeper", "sleep", "1000")
		hp, pid, err := v.newContainer("sleeper", spec, rootfs, true)
		if err != nil {
			t.Fatal(err)
		}
		// Created, not started: exec is refused by nothing, start works once.
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "sleeper"}, nil)
		if err := v.call(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "sleeper"}, nil); remoteKind(err) != agentproto.KindState {
			t.Errorf("second start: %v", err)
		}
		if err := v.call(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "sleeper"}, nil); remoteKind(err) != agentproto.KindState {
			t.Errorf("remove running: %v", err)
		}

		ep, err := v.exec("sleeper", "e1", execProcess(spec, "sh", "-c", "echo exec-ok; echo to-err >&2; exit 3"), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if out := v.output(ep.stdout); out != "exec-ok\n" {
			t.Errorf("exec stdout %q", out)
		}
		if e := v.output(ep.errout); e != "to-err\n" {
			t.Errorf("exec stderr %q", e)
		}
		if exit := v.exitOf("sleeper", "e1"); exit.ExitCode != 3 {
			t.Errorf("exec exit %+v", exit)
		}

		if _, err := v.exec("sleeper", "e2", execProcess(spec, "nosuch-cmd"), 0, 0); remoteKind(err) != agentproto.KindNotExecutable {
			t.Errorf("exec of a missing command: %v", err)
		} else {
			t.Logf("exec missing → %v", err)
		}

		tp := execProcess(spec, "sh", "-c", "tty; stty size")
		tp.Terminal = true
		tt, err := v.exec("sleeper", "tty", tp, 25, 100)
		if err != nil {
			t.Fatal(err)
		}
		out := v.output(tt.stdout)
		if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "25 100") {
			t.Errorf("terminal output %q", out)
		}
		if exit := v.exitOf("sleeper", "tty"); exit.ExitCode != 0 {
			t.Errorf("tty exit %+v", exit)
		}

		var list agentproto.ProcessList
		v.mustCall(agentproto.MsgListProcesses, agentproto.ContainerRef{Container: "sleeper"}, &list)
		found := false
		for _, p := range list.Pids {
			found = found || p == pid
		}
		if !found {
			t.Errorf("LISTPROCESSES %v lacks init pid %d", list.Pids, pid)
		}
		var initArgs []string
		for _, p := range list.Processes {
			if p.Pid == pid {
				initArgs = p.Cmdline
			}
		}
		if len(initArgs) == 0 || initArgs[0] != "sleep" {
			t.Errorf("LISTPROCESSES describes init pid %d as %q, want its command line (sleep ...): %+v", pid, initArgs, list.Processes)
		}
		var st agentproto.Stats
		v.mustCall(agentproto.MsgStats, agentproto.ContainerRef{Container: "sleeper"}, &st)
		if st.Pids == 0 || st.MemoryUsageBytes == 0 {
			t.Errorf("stats %+v", st)
		}
		limit := int64(64 << 20)
		v.mustCall(agentproto.MsgUpdateContainer, agentproto.UpdateContainer{Container: "sleeper",
			Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}}, nil)
		v.mustCall(agentproto.MsgStats, agentproto.ContainerRef{Container: "sleeper"}, &st)
		if st.MemoryLimitBytes != uint64(limit) {
			t.Errorf("memory limit after update: %d", st.MemoryLimitBytes)
		}
		v.mustCall(agentproto.MsgPauseContainer, agentproto.ContainerRef{Container: "sleeper"}, nil)
		if _, err := v.exec("sleeper", "e3", execProcess(spec, "true"), 0, 0); remoteKind(err) != agentproto.KindState {
			t.Errorf("exec in a paused container: %v", err)
		}
		v.mustCall(agentproto.MsgResumeContainer, agentproto.ContainerRef{Container: "sleeper"}, nil)

		// sleep is its pid namespace's init: SIGTERM (no handler) is ignored, SIGKILL is not.
		v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "sleeper", Process: agentproto.InitProcessID, Signal: int(syscall.SIGKILL)}, nil)
		v.output(hp.stdout)
		if exit := v.exitOf("sleeper", agentproto.InitProcessID); exit.ExitCode != 137 || exit.Signal != 9 {
			t.Errorf("killed exit %+v", exit)
		}
		if err := v.call(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "sleeper", Process: agentproto.InitProcessID, Signal: 15}, nil); remoteKind(err) != agentproto.KindState {
			t.Errorf("signal to a stopped container: %v", err)
		}
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "sleeper"}, nil)
	})

	t.Run("orphans", func(t *testing.T) {
		defer v.use(t)()
		// Without a pid namespace, orphans are reparented to the agent (PID 1), which must
		// reap them without stealing the exit statuses libcontainer waits for.
		rootfs, spec := v.busyboxContainer("hostpid", "sleep", "1000")
		var nss []specs.LinuxNamespace
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type != specs.PIDNamespace {
				nss = append(nss, ns)
			}
		}
		spec.Linux.Namespaces = nss
		hp, _, err := v.newContainer("hostpid", spec, rootfs, true)
		if err != nil {
			t.Fatal(err)
		}
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "hostpid"}, nil)
		for i := 0; i < 3; i++ {
			id := "orphan" + strconv.Itoa(i)
			ep, err := v.exec("hostpid", id, execProcess(spec, "sh", "-c", "sh -c 'exit 0' & echo $!; exit 5"), 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			orphan := strings.TrimSpace(v.output(ep.stdout))
			if exit := v.exitOf("hostpid", id); exit.ExitCode != 5 {
				t.Fatalf("exec exit %+v: a stolen status would read 255", exit)
			}
			check := "for i in $(seq 100); do [ -e /proc/" + orphan + " ] || exit 0; sleep 0.05; done; exit 1"
			cp, err := v.exec("hostpid", "check"+strconv.Itoa(i), execProcess(spec, "sh", "-c", check), 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			v.output(cp.stdout)
			if exit := v.exitOf("hostpid", "check"+strconv.Itoa(i)); exit.ExitCode != 0 {
				t.Errorf("orphan %s is still a zombie", orphan)
			}
		}
		v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "hostpid", Signal: int(syscall.SIGKILL), All: true}, nil)
		v.output(hp.stdout)
		v.exitOf("hostpid", agentproto.InitProcessID)
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "hostpid"}, nil)
	})

	t.Run("winsize-closestdin", func(t *testing.T) {
		defer v.use(t)()
		rootfs, spec := v.busyboxContainer("term", "sleep", "1000")
		hp, _, err := v.newContainer("term", spec, rootfs, true)
		if err != nil {
			t.Fatal(err)
		}
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "term"}, nil)

		// WINSIZE reaches the terminal of a running process.
		tp := execProcess(spec, "sh", "-c", "read x; stty size")
		tp.Terminal = true
		tt := v.streams(true, false)
		v.mustCall(agentproto.MsgExecCmd, agentproto.ExecProcess{Container: "term", ID: "resize", Process: tp, IO: tt.io, ConsoleRows: 25, ConsoleCols: 80}, nil)
		v.mustCall(agentproto.MsgWinSize, agentproto.WindowSize{Container: "term", Process: "resize", Rows: 40, Cols: 120}, nil)
		tt.stdio.Write([]byte("go\n"))
		if out := v.output(tt.stdout); !strings.Contains(out, "40 120") {
			t.Errorf("after WINSIZE 40x120: %q", out)
		}
		v.exitOf("term", "resize")

		// CLOSESTDIN on a pipe: cat sees EOF without an EOF frame.
		pp := v.streams(false, false)
		v.mustCall(agentproto.MsgExecCmd, agentproto.ExecProcess{Container: "term", ID: "cat", Process: execProcess(spec, "cat"), IO: pp.io}, nil)
		pp.stdio.Write([]byte("abc"))
		// WINSIZE on a process without a terminal is a no-op, as in containerd's shims.
		v.mustCall(agentproto.MsgWinSize, agentproto.WindowSize{Container: "term", Process: "cat", Rows: 1, Cols: 1}, nil)
		v.mustCall(agentproto.MsgCloseStdin, agentproto.ProcessRef{Container: "term", Process: "cat"}, nil)
		out := v.output(pp.stdout)
		if exit := v.exitOf("term", "cat"); exit.ExitCode != 0 {
			t.Errorf("cat after CLOSESTDIN: %+v", exit)
		}
		// "abc" may or may not have been delivered before the close: both are correct.
		if out != "abc" && out != "" {
			t.Errorf("cat output %q", out)
		}

		// CLOSESTDIN on a terminal types ^D.
		tc := execProcess(spec, "cat")
		tc.Terminal = true
		ct := v.streams(true, false)
		v.mustCall(agentproto.MsgExecCmd, agentproto.ExecProcess{Container: "term", ID: "ttycat", Process: tc, IO: ct.io}, nil)
		v.mustCall(agentproto.MsgCloseStdin, agentproto.ProcessRef{Container: "term", Process: "ttycat"}, nil)
		v.output(ct.stdout)
		if exit := v.exitOf("term", "ttycat"); exit.ExitCode != 0 {
			t.Errorf("terminal cat after CLOSESTDIN: %+v", exit)
		}

		v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "term", Signal: int(syscall.SIGKILL)}, nil)
		v.output(hp.stdout)
		v.exitOf("term", agentproto.InitProcessID)
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "term"}, nil)
	})

	t.Run("fast-reconnect", func(t *testing.T) {
		defer v.use(t)()
		// The host drops the control connection and is back at once: the guest may not
		// even see the gap (QEMU reports the close and the new client back to back), but
		// it must serve the new connection with its state intact.
		rootfs, spec := v.busyboxContainer("survivor", "sleep", "1000")
		hp, _, err := v.newContainer("survivor", spec, rootfs, true)
		if err != nil {
			t.Fatal(err)
		}
		v.ctlMu.Lock()
		v.ctl.Close()
		v.ctlMu.Unlock()
		v.connectControl()
		v.mustCall(agentproto.MsgPing, nil, nil)
		v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "survivor"}, nil)
		v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "survivor", Signal: int(syscall.SIGKILL)}, nil)
		v.output(hp.stdout)
		if exit := v.exitOf("survivor", agentproto.InitProcessID); exit.ExitCode != 137 {
			t.Errorf("exit %+v", exit)
		}
	})

	// A running container is killed by DESTROYPOD.
	rootfs, spec = v.busyboxContainer("last", "sleep", "1000")
	if _, _, err := v.newContainer("last", spec, rootfs, true); err != nil {
		t.Fatal(err)
	}
	v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "last"}, nil)
	destroy(t, v)
}

// TestVMProbe boots with runv.probe=1: the guest prints the marker and powers off.
func TestVMProbe(t *testing.T) {
	v := bootVM(t, vmOptions{cmdline: "runv.probe=1"})
	if !v.waitExited(60 * time.Second) {
		t.Fatal("probe VM did not power off")
	}
	at, ok := v.consoleHas(ProbeMarker)
	if !ok {
		t.Fatalf("no %s on the console", ProbeMarker)
	}
	t.Logf("TIMING qemu start → %s: %.3f s, qemu exit %.3f s", ProbeMarker, at.Seconds(), v.since().Seconds())
}

// TestVMNamedPorts: with runv.ports the agent opens the ports at the nodes named there
// (runv's QEMU command line puts them there); nodes that do not exist and the agent finds
// its ports by name instead. Either way it serves.
func TestVMNamedPorts(t *testing.T) {
	for _, tc := range []struct {
		name, param, want string
	}{
		{"named", "runv.ports=vport0p1,vport0p2", "control port /dev/vport0p1, stream port /dev/vport0p2 (named on the command line)"},
		{"named nodes missing", "runv.ports=vport7p1,vport7p2", "control port /dev/vport0p1, stream port /dev/vport0p2 (found by name)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := bootVM(t, vmOptions{cmdline: "runv.debug=1 " + tc.param})
			v.event(agentproto.MsgReady)
			v.mustCall(agentproto.MsgPing, nil, nil)
			v.waitConsole(tc.want, 1)
			destroy(t, v)
		})
	}
}

// TestVMReconnect closes the control connection and reconnects, as a host does around a
// VM template snapshot: the agent announces itself again and keeps its state. The boot's
// READY carries the agent's boot steps for the host's log; a reconnect's READY none.
func TestVMReconnect(t *testing.T) {
	v := bootVM(t, vmOptions{})
	if steps := readyBootSteps(t, v.event(agentproto.MsgReady)); !strings.Contains(steps, "main at ") || !strings.Contains(steps, ", lo ") || !strings.Contains(steps, ", host ") {
		t.Errorf("the boot's READY has boot steps %q, want the agent's main, lo and the host's connection timed", steps)
	}
	v.startPod("pod3")
	for i := 1; i <= 3; i++ {
		v.ctlMu.Lock()
		v.ctl.Close()
		v.ctlMu.Unlock()
		// As around a template snapshot: the host stays away until the guest parked.
		v.waitConsole("host disconnected from the control port", i)
		at := v.since()
		v.connectControl()
		ready := v.event(agentproto.MsgReady)
		t.Logf("TIMING reconnect %d → READY: %.1f ms", i, (ready.at-at).Seconds()*1000)
		if steps := readyBootSteps(t, ready); steps != "" {
			t.Errorf("reconnect %d: READY has boot steps %q, want none", i, steps)
		}
		v.mustCall(agentproto.MsgPing, nil, nil)
	}
	if err := v.call(agentproto.MsgStartPod, agentproto.Pod{ID: "again"}, nil); remoteKind(err) != agentproto.KindState {
		t.Errorf("state lost across reconnects: second STARTPOD → %v", err)
	}
	destroy(t, v)
}

// TestVMProtocolError sends a malformed frame: the agent drops that connection (it cannot
// resynchronise a byte stream), keeps running, and serves the next connection.
func TestVMProtocolError(t *testing.T) {
	v := bootVM(t, vmOptions{})
	v.event(agentproto.MsgReady)
	v.startPod("pod4")
	v.ctlMu.Lock()
	// A PING whose length field claims 4 GiB: refused before anything is allocated.
	v.ctl.Write([]byte{0, 0, 0, byte(agentproto.MsgPing), 0xff, 0xff, 0xff, 0xff})
	v.ctlMu.Unlock()
	v.waitConsole("PROTOCOL ERROR on the control port", 1)
	v.ctlMu.Lock()
	v.ctl.Close()
	v.ctlMu.Unlock()
	v.waitConsole("host disconnected after the protocol error", 1)
	v.connectControl()
	v.event(agentproto.MsgReady)
	v.mustCall(agentproto.MsgPing, nil, nil)
	if err := v.call(agentproto.MsgStartPod, agentproto.Pod{ID: "again"}, nil); remoteKind(err) != agentproto.KindState {
		t.Errorf("pod state lost: %v", err)
	}
	destroy(t, v)
}

// NEWCONTAINER with Start creates and starts the container in one command (a foreground
// run): the program runs without STARTCONTAINER, the answer says so, and a STARTCONTAINER
// after it is refused as for any container that is not created.
func TestVMCreateAndStart(t *testing.T) {
	v := bootVM(t, vmOptions{})
	rootfs, spec := v.busyboxContainer("c1", "uname", "-r")
	v.event(agentproto.MsgReady)
	v.startPod("pod1")
	hp := v.streams(false, true)
	var started agentproto.ProcessStarted
	if err := v.call(agentproto.MsgNewContainer, agentproto.Container{ID: "c1", Rootfs: rootfs, Spec: spec, IO: hp.io, Start: true}, &started); err != nil {
		t.Fatalf("NEWCONTAINER with Start: %v", err)
	}
	if !started.Started || started.Pid <= 0 {
		t.Errorf("NEWCONTAINER with Start answered %+v, want a pid and started", started)
	}
	out := v.output(hp.stdout)
	if exit := v.exitOf("c1", agentproto.InitProcessID); !strings.HasPrefix(out, "6.") || exit.ExitCode != 0 || exit.Error != "" {
		t.Fatalf("uname -r started with its creation: output %q, exit %+v", out, exit)
	}
	if err := v.call(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "c1"}, nil); remoteKind(err) != agentproto.KindState {
		t.Errorf("STARTCONTAINER of a container started with its creation: %v, want a state error", err)
	}
	v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "c1"}, nil)
	destroy(t, v)
}

// TestVMConvertedContainer: a container made from the host's conversion of its spec
// (convert.ForGuest, what the pod daemon sends for runc's example spec) is the container
// the agent makes when it converts the spec itself, as its process sees it; and the
// conversion the agent then owes it (exec, stats, update, kill) works.
func TestVMConvertedContainer(t *testing.T) {
	// runv.debug=1: which way a container was made is on its "created" line, a debug one.
	v := bootVM(t, vmOptions{cmdline: "runv.debug=1"})
	const script = `grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; hostname; id; umask; ulimit -n
stat -c '%n %A %t:%T' /dev/*; cut -d' ' -f5,6,9 /proc/self/mountinfo; cat /proc/self/cgroup; head -c1 /dev/zero | wc -c`
	outputs := map[string]string{}
	v.event(agentproto.MsgReady)
	// No DNS: the host converts for a pod without resolv.conf (runv run's).
	v.mustCall(agentproto.MsgStartPod, agentproto.Pod{ID: "pod1", Hostname: "pod1", TimeUnixNano: time.Now().UnixNano()}, nil)
	for _, tc := range []struct {
		id        string
		converted bool
	}{{"own", false}, {"host", true}} {
		rootfs, spec := v.busyboxContainer(tc.id, "sh", "-c", script)
		spec.Hostname = "c"
		m := agentproto.Container{ID: tc.id, Rootfs: rootfs, Spec: spec, Start: true}
		if tc.converted {
			var why string
			if m.Converted, why = convert.ForGuest(tc.id, rootfs, spec, false); m.Converted == nil {
				t.Fatalf("runc's example spec is not converted on the host: %s", why)
			}
		}
		hp := v.streams(false, true)
		m.IO = hp.io
		if err := v.call(agentproto.MsgNewContainer, m, nil); err != nil {
			t.Fatalf("NEWCONTAINER %s: %v", tc.id, err)
		}
		// The one difference meant: the cgroup is named after the container.
		outputs[tc.id] = strings.ReplaceAll(v.output(hp.stdout), "/runv/"+tc.id, "/runv/ID")
		v.waitConsole("ctr="+tc.id+": created", 1)
		if _, fromHost := v.consoleHas("from the host's conversion"); fromHost != tc.converted {
			t.Errorf("container %s made from the host's conversion: %v, want %v", tc.id, fromHost, tc.converted)
		}
		if exit := v.exitOf(tc.id, agentproto.InitProcessID); exit.ExitCode != 0 {
			t.Fatalf("container %s: exit %+v, output %q", tc.id, exit, outputs[tc.id])
		}
		v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: tc.id}, nil)
	}
	if outputs["host"] != outputs["own"] {
		t.Errorf("the container made from the host's conversion sees\n%s\nthe agent's own\n%s", outputs["host"], outputs["own"])
	}
	if !strings.Contains(outputs["own"], "/dev/zero crw-rw-rw- 1:5") || !strings.Contains(outputs["own"], "CapBnd") {
		t.Errorf("the containers' view lacks its devices or capabilities:\n%s", outputs["own"])
	}

	rootfs, spec := v.busyboxContainer("sleeper", "sleep", "1000")
	cv, _ := convert.ForGuest("sleeper", rootfs, spec, false)
	hp := v.streams(false, true)
	v.mustCall(agentproto.MsgNewContainer, agentproto.Container{ID: "sleeper", Rootfs: rootfs, Spec: spec, IO: hp.io, Start: true, Converted: cv}, nil)
	ep, err := v.exec("sleeper", "e1", execProcess(spec, "sh", "-c", "grep ^CapBnd /proc/self/status; echo exec-ok"), 0, 0)
	if err != nil {
		t.Fatalf("exec in a container made from the host's conversion: %v", err)
	}
	if out := v.output(ep.stdout); !strings.Contains(out, "exec-ok") || !strings.Contains(out, "CapBnd") {
		t.Errorf("exec output %q", out)
	}
	if exit := v.exitOf("sleeper", "e1"); exit.ExitCode != 0 {
		t.Errorf("exec exit %+v", exit)
	}
	limit := int64(64 << 20)
	v.mustCall(agentproto.MsgUpdateContainer, agentproto.UpdateContainer{Container: "sleeper",
		Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}}, nil)
	var st agentproto.Stats
	v.mustCall(agentproto.MsgStats, agentproto.ContainerRef{Container: "sleeper"}, &st)
	if st.MemoryLimitBytes != uint64(limit) || st.Pids == 0 {
		t.Errorf("stats after an update: %+v", st)
	}
	v.mustCall(agentproto.MsgSignalProcess, agentproto.SignalProcess{Container: "sleeper", Process: agentproto.InitProcessID, Signal: int(syscall.SIGKILL)}, nil)
	if exit := v.exitOf("sleeper", agentproto.InitProcessID); exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("sleep after SIGKILL: %+v", exit)
	}
	v.mustCall(agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "sleeper"}, nil)
	destroy(t, v)
}

// readyBootSteps is a READY frame's boot steps ("" for none).
func readyBootSteps(t *testing.T, e timedFrame) string {
	t.Helper()
	var r agentproto.Ready
	if err := e.f.Unmarshal(&r); err != nil {
		t.Fatalf("READY's payload: %v", err)
	}
	return r.BootSteps
}
