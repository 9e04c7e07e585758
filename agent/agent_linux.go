package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	// The same binary is libcontainer's "runc init": nsenter's cgo constructor sets up the
	// namespaces before the Go runtime starts (a no-op unless libcontainer started us), and
	// the devices package registers the cgroup device-rule manager (without it device rules
	// fail to apply).
	_ "github.com/opencontainers/cgroups/devices"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"github.com/runv-project/runv/api/agentproto"
)

// AgentName is reported in VersionInfo.
var AgentName = "runv-agent (" + runtime.Version() + ")"

// portWait bounds the wait for the virtio-serial ports at boot.
const portWait = 10 * time.Second

// IsContainerInit reports whether argv is libcontainer re-executing this binary as the
// container's init (`runv-agent init`).
func IsContainerInit(args []string) bool { return len(args) > 1 && args[1] == "init" }

// ContainerInit runs libcontainer's init inside a container being created. It never returns.
func ContainerInit() { libcontainer.Init() }

// Agent is the guest's PID 1: it serves the control protocol and runs the pod's containers.
type Agent struct {
	log    *logger
	flags  bootFlags
	trace  *tracer
	reaper *reaper
	d      *Dispatcher
	ctl    *vport
	mux    *agentproto.Mux
	// forwards are the host's port forwards (portforward_linux.go).
	forwards *portForwards

	mu         sync.Mutex
	pod        *podState
	containers map[string]*container
	creating   map[string]bool // ids whose NEWCONTAINER is in progress
	// sandbox is the pod's first container still there: members that share the pod's PID
	// namespace join its init's (see convert.AdjustSpec).
	sandbox    string
	destroying bool
	// execHelper is the exec helper's path, "" when execs go through libcontainer alone
	// (fastexec_linux.go).
	execHelper string
	// createEngine: containers are made by the create engine where convert.CreateFallback allows
	// (createengine_linux.go, api/convert); false with runv.create=libcontainer or without the exec helper.
	createEngine bool
	// loopbackReady: the boot brought lo up, so STARTPOD need not check it again (nothing
	// in the VM's network namespace can take it down before the pod's first container).
	loopbackReady bool
	// shareMounted is the tag of the 9p share WARMUP mounted at SharePath ahead of the
	// pod ("" if none): STARTPOD keeps it when the pod asks for the same share.
	shareMounted string
}

// Main is PID 1. It only returns (with an error) when it is not PID 1, so that running the
// binary by hand on a host does nothing harmful; as PID 1 it serves until DESTROYPOD or a
// fatal error, and then powers the VM off.
func Main() error {
	if os.Getpid() != 1 {
		return errors.New("runv-agent is the init process of a runv guest VM and must run as PID 1")
	}
	steps := newBootSteps()
	// Every line before the console is reopened goes to the kernel-provided fd 2.
	log := newLogger(os.Stderr, false)
	// Signals a container sharing the guest's pid namespace might send to PID 1 must not
	// terminate it (Go's default for SIGTERM/SIGINT/SIGHUP is to exit). signal.Notify and
	// not signal.Ignore: ignored dispositions would be inherited by container processes
	// across execve.
	stray := make(chan os.Signal, 8)
	signal.Notify(stray, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPIPE)
	go func() {
		for s := range stray {
			log.Infof("ignoring signal %v sent to PID 1", s)
		}
	}()
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

	if err := setupRoot(log); err != nil {
		fatal(log, "%v", err)
	}
	steps.done("root")
	if c, err := openConsole(); err != nil {
		log.Errorf("%v (logging to the kernel's stderr)", err)
	} else {
		log.setOutput(c)
	}
	flags, err := readCmdline()
	if err != nil {
		log.Errorf("%v", err)
	}
	steps.done("console+cmdline")
	if flags.Probe {
		// The host only needs proof that the guest ran userspace: print and go.
		log.setOutput(nil)
		if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
			fmt.Fprintln(c, ProbeMarker)
		}
		powerOff(log, "probe done")
	}
	// lo is the same for every pod: bringing it up (8-15 ms of kernel work under TCG:
	// routes, IPv6 address) here takes it off every pod's STARTPOD on VMs booted ahead of
	// their pod (template clones inherit it, pooled VMs did it while waiting); STARTPOD
	// only tries again if this failed.
	loErr := loopbackUp()
	if loErr != nil {
		log.Errorf("%v (STARTPOD tries again)", loErr)
	}
	steps.done("lo")
	log.setDebug(flags.Debug)
	tr := &tracer{on: flags.Trace}
	setupLogrus(log, flags.Debug, tr)
	// A boot writes nothing on the console unless something fails: under TCG each byte is
	// an emulated port write on the pod's path. The boot's steps go with READY (run).
	log.Debugf("PID 1 up (%s), debug=%s", AgentName, strconv.FormatBool(flags.Debug)) // fmt's bool code: ~10 blocks of a cold guest

	a := &Agent{log: log, flags: flags, trace: tr, reaper: newReaper(log), containers: make(map[string]*container), creating: make(map[string]bool), forwards: newPortForwards(),
		loopbackReady: loErr == nil}
	if flags.LibcontainerExec {
		log.Infof("runv.exec=libcontainer: execs go through libcontainer's runc init")
	} else if a.execHelper, err = sealExecHelper(); err != nil {
		log.Errorf("exec helper: %v (execs go through libcontainer's runc init)", err)
	}
	a.createEngine = a.execHelper != "" && !flags.LibcontainerCreate
	installDeviceFilters()
	if a.execHelper != "" && !a.createEngine {
		log.Infof("runv.create=libcontainer: containers are made by libcontainer's runc init")
	}
	steps.done("log+helper")
	a.run(steps)
	return nil // unreachable: run powers off
}

// run finds the ports, starts the reaper and the stream mux, and serves the control port
// forever. steps are the boot's so far, logged once the first READY is out.
func (a *Agent) run(steps *bootSteps) {
	ctx := context.Background()
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	go a.reaper.run(ctx, sigchld)

	hub := newSigioHub()
	ctl, stream, named, err := openAgentPorts(a.flags, hub)
	if err != nil {
		fatal(a.log, "%v", err)
	}
	a.ctl = ctl
	a.mux = agentproto.NewMux(stream, a.log.with("chan", "stream").logf)
	go a.watchMux(a.mux, stream.path, hub)
	a.d = NewDispatcher(ctx, ctl, a.log.with("chan", "control"), a.handler)
	how := "found by name"
	if named {
		how = "named on the command line"
	}
	a.log.Debugf("control port %s, stream port %s (%s)", ctl.path, stream.path, how)
	steps.done("ports")

	for {
		if err := ctl.waitConnected(); err != nil {
			fatal(a.log, "%v", err)
		}
		// READY tells the host (again, after a reconnect) that the agent is serving; the
		// first one carries the boot's steps for the host's log, not the console's.
		var ready agentproto.Ready
		if steps != nil {
			steps.done("host")
			ready.BootSteps = steps.String()
		}
		if err := a.d.Send(agentproto.MsgReady, ready); err != nil {
			a.log.Errorf("send READY: %v", err)
			continue
		}
		if steps != nil {
			a.log.Debugf("READY (%s); boot steps: %s", AgentName, ready.BootSteps)
			steps = nil
		} else {
			a.log.Debugf("READY sent")
		}
		err := a.d.Serve(ctl)
		switch {
		case ctl.takeDisconnected():
			if errors.Is(err, agentproto.ErrProtocol) {
				a.log.Infof("host disconnected in the middle of a frame (%v); the frame is lost", err)
			} else {
				a.log.Infof("host disconnected from the control port; waiting for it to reconnect")
			}
		case errors.Is(err, agentproto.ErrProtocol):
			// The byte stream can no longer be trusted to be in sync: stop serving this
			// connection. The host fails the pod on its side; if it reconnects instead, a
			// fresh connection starts clean.
			a.log.Errorf("PROTOCOL ERROR on the control port, dropping the connection: %v", err)
			a.drainUntilDisconnect()
		default:
			fatal(a.log, "control port: %v", err)
		}
	}
}

// watchMux replaces a failed stream mux. The mux only fails on a malformed frame or an I/O
// error (a host disconnect is waited out inside the port): that connection is finished,
// the streams on it are lost (their processes' output is discarded from then on), and the
// host fails the pod on its side. If it reconnects instead, new processes get a fresh mux
// once the stale bytes of the old connection are drained.
func (a *Agent) watchMux(m *agentproto.Mux, path string, hub *sigioHub) {
	for {
		<-m.Done()
		a.log.Errorf("PROTOCOL ERROR on the stream port, dropping the connection and its streams: %v", m.Err())
		port, err := openPort(agentproto.StreamPortName, path, hub, false)
		if err != nil {
			fatal(a.log, "%v", err)
		}
		buf := make([]byte, 64<<10)
		for {
			if _, err := port.Read(buf); err != nil {
				if !errors.Is(err, errHostDisconnected) {
					fatal(a.log, "stream port: %v", err)
				}
				break
			}
		}
		port.waitOnRead = true
		if err := port.waitConnected(); err != nil {
			fatal(a.log, "%v", err)
		}
		m = agentproto.NewMux(port, a.log.with("chan", "stream").logf)
		a.mu.Lock()
		a.mux = m
		a.mu.Unlock()
		a.log.Infof("stream port reconnected with a fresh mux")
	}
}

// streams returns the current stream mux.
func (a *Agent) streams() *agentproto.Mux {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mux
}

// drainUntilDisconnect discards control input until the host goes away.
func (a *Agent) drainUntilDisconnect() {
	buf := make([]byte, 4096)
	for {
		if _, err := a.ctl.Read(buf); err != nil {
			if !errors.Is(err, errHostDisconnected) {
				fatal(a.log, "control port: %v", err)
			}
			a.ctl.takeDisconnected()
			a.log.Infof("host disconnected after the protocol error; waiting for a fresh connection")
			return
		}
	}
}

// handler is the agent's handler of commands of type t, nil for none.
func (a *Agent) handler(t agentproto.MsgType) Handler {
	switch t {
	case agentproto.MsgGetVersion:
		return getVersion
	case agentproto.MsgPing:
		return ping
	case agentproto.MsgStartPod:
		return a.startPod
	case agentproto.MsgDestroyPod:
		return a.destroyPod
	case agentproto.MsgNewContainer:
		return a.newContainer
	case agentproto.MsgStartContainer:
		return a.startContainer
	case agentproto.MsgExecCmd:
		return a.execCmd
	case agentproto.MsgSignalProcess:
		return a.signalProcess
	case agentproto.MsgWinSize:
		return a.winSize
	case agentproto.MsgCloseStdin:
		return a.closeStdin
	case agentproto.MsgRemoveContainer:
		return a.removeContainer
	case agentproto.MsgPauseContainer:
		return a.pauseContainer
	case agentproto.MsgResumeContainer:
		return a.resumeContainer
	case agentproto.MsgListProcesses:
		return a.listProcesses
	case agentproto.MsgStats:
		return a.stats
	case agentproto.MsgUpdateContainer:
		return a.updateContainer
	case agentproto.MsgOnlineCPUMem:
		return a.onlineCPUMem
	case agentproto.MsgSetupNetwork:
		return a.setupNetwork
	case agentproto.MsgWarmup:
		return a.warmup
	case agentproto.MsgPortForward:
		return a.portForward
	case agentproto.MsgCloseForward:
		return a.closeForward
	}
	return nil
}

func getVersion(context.Context, *Request) (any, error) {
	return agentproto.VersionInfo{Version: agentproto.Version, Agent: AgentName}, nil
}

func ping(context.Context, *Request) (any, error) { return nil, nil }

// sendExit reports a process's exit. It blocks while the host is disconnected.
func (a *Agent) sendExit(e agentproto.ProcessExit) {
	if err := a.d.Send(agentproto.MsgProcessExit, e); err != nil {
		a.log.Errorf("send PROCESSEXIT for %s/%s: %v", e.Container, e.Process, err)
	}
}

var _ io.ReadWriteCloser = (*vport)(nil)
