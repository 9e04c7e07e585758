package agentproto

import (
	"encoding/json"
	"fmt"

	devices "github.com/opencontainers/cgroups/devices/config"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Ready is MsgReady's payload: how the agent's boot went, for the host's log. A cold guest
// writes it here rather than on its console, where each byte is an emulated serial port
// write and the first line a guest process writes runs its tty layer's code for the first
// time (~270 translated blocks of every direct boot: docs/performance.md, "The boot line
// off the console, stop 23"). Empty in a READY after the first (a reconnect).
type Ready struct {
	// BootSteps are the agent's steps from its main to READY, with their durations.
	BootSteps string `json:"bootSteps,omitempty"`
}

// VersionInfo answers MsgGetVersion.
type VersionInfo struct {
	Version int    `json:"version"`
	Agent   string `json:"agent"` // free text, e.g. "runv-agent 0.1.0 (go1.26)"
}

// Pod is MsgStartPod's payload. It is sent once per pod after the VM came up (or after a clone
// was restored), so it also carries what a clone must not inherit from its template: the wall
// clock and fresh entropy.
type Pod struct {
	ID         string   `json:"id"`
	Hostname   string   `json:"hostname,omitempty"`
	DNS        []string `json:"dns,omitempty"`
	DNSSearch  []string `json:"dnsSearch,omitempty"`
	DNSOptions []string `json:"dnsOptions,omitempty"`
	// ShareTag is the 9p mount tag to mount at SharePath in the guest (empty: ShareTag).
	ShareTag string `json:"shareTag,omitempty"`
	// TimeUnixNano is the host's wall clock when the message was built.
	TimeUnixNano int64 `json:"timeUnixNano,omitempty"`
	// Entropy is host randomness the agent mixes into the guest RNG (and credits).
	Entropy []byte `json:"entropy,omitempty"`
}

// SharePath is where the agent mounts the pod share inside the guest.
const SharePath = "/run/runv/share"

// Stdio names the stream seqs of one process. Stdio carries stdin (host→guest) and stdout
// (guest→host); Stderr carries stderr and is 0 for terminal processes, whose output is merged.
// Seqs are allocated by the host, unique per pod, never reused, never 0.
type Stdio struct {
	Stdio  uint64 `json:"stdio"`
	Stderr uint64 `json:"stderr,omitempty"`
	// NoStdin means the process gets /dev/null as stdin and no stdin frames will be sent.
	NoStdin bool `json:"noStdin,omitempty"`
}

// Container is MsgNewContainer's payload: create (but do not start) a container.
type Container struct {
	ID string `json:"id"`
	// Rootfs is the container's root relative to the pod share, e.g. "<id>/rootfs".
	Rootfs string `json:"rootfs"`
	// Spec is the OCI runtime spec as given in the bundle. Root.Path and bind-mount sources are
	// rewritten by the host to paths relative to the share; hooks are stripped (they run on
	// the host), and so are namespace paths (see SharePID).
	Spec *specs.Spec `json:"spec"`
	// IO is the init process's stdio.
	IO Stdio `json:"io"`
	// ConsoleRows/Cols size the terminal when Spec.Process.Terminal is set.
	ConsoleRows uint16 `json:"consoleRows,omitempty"`
	ConsoleCols uint16 `json:"consoleCols,omitempty"`
	// Member: the container is a member of the pod (a CRI container of its sandbox, or
	// one whose spec named a pod container's namespace), which joins the pod's namespaces;
	// not a container that only shares the VM (containerd's runc shim groups). SharePID
	// asks for the sandbox's PID namespace too: the spec named a PID namespace by path
	// (Kubernetes' shareProcessNamespace, --pid=container:X). The host sends no namespace
	// paths; the agent decides every namespace in the guest.
	Member   bool `json:"member,omitempty"`
	SharePID bool `json:"sharePid,omitempty"`
	// Start has the agent start the container once it is created, as STARTCONTAINER would,
	// before it answers (ProcessStarted.Started): a foreground run, which has nothing to do
	// between the two, saves a round trip. An agent that does not know it answers without
	// Started, and the host sends STARTCONTAINER.
	Start bool `json:"start,omitempty"`
	// Converted is the host's conversion of Spec for the create engine (api/convert,
	// the code the agent would run: a cold guest's first container translates less), nil
	// when the spec has something only the guest can convert (ForGuest says what). An agent
	// that does not know it, or whose guest differs from what the host assumed, converts
	// Spec itself.
	Converted *Converted `json:"converted,omitempty"`
}

// Converted is a container's spec converted by the host: the exec helper's create request
// but for the guest's fields (descriptors, the cgroup directory, the kernel's last
// capability), and the cgroup the agent makes: a cgroup with device rules only (no limits,
// what runc's example spec has). It assumes a container that is not a pod
// member, a pod without resolv.conf (STARTPOD without DNS) and the create engine.
type Converted struct {
	// Fields are the request's fields that the spec decides, encoded as the helper reads
	// them (convert.ExecRequest.EncodeSpecFields).
	Fields []byte `json:"fields"`
	// Caps are the capability sets (bounding, effective, inheritable, permitted, ambient)
	// over every capability the host knows; empty: the capabilities stay as they are.
	Caps []uint64 `json:"caps,omitempty"`
	// The container's tagCreate values, but its start descriptor.
	CloneFlags      uint32 `json:"cloneFlags"`
	RootPropagation uint32 `json:"rootPropagation,omitempty"`
	ReadonlyRoot    bool   `json:"readonlyRoot,omitempty"`
	SetupDev        bool   `json:"setupDev,omitempty"`
	// CgroupNS: the container has a cgroup namespace of its own (the helper is told its
	// cgroup directory).
	CgroupNS bool `json:"cgroupNs,omitempty"`
	// CgroupPath (absolute and clean, not "/") and DeviceRules are the container's
	// cgroup configuration as
	// libcontainer's specconv makes it (convert.CgroupOf), which has nothing else. Not
	// cgroups.Cgroup itself: it embeds its resources, which the agent's decoder leaves to
	// encoding/json, ~600 translated blocks of a cold guest.
	CgroupPath  string          `json:"cgroupPath"`
	DeviceRules []*devices.Rule `json:"deviceRules"`
	// DeviceProgram is the device filter DeviceRules compile to (convert.DeviceProgram: the
	// eBPF program's instructions), which the agent loads and attaches.
	DeviceProgram []byte `json:"deviceProgram"`
}

// ExecProcess is MsgExecCmd's payload: run an additional process in a running container.
type ExecProcess struct {
	Container   string         `json:"container"`
	ID          string         `json:"id"`
	Process     *specs.Process `json:"process"`
	IO          Stdio          `json:"io"`
	ConsoleRows uint16         `json:"consoleRows,omitempty"`
	ConsoleCols uint16         `json:"consoleCols,omitempty"`
	// ProgramHint is where the host found Process.Args[0] in its PATH in the container's
	// rootfs (supervisor/programhint.go): the exec helper checks it first instead of
	// probing each PATH entry before it. "" for none.
	ProgramHint string `json:"programHint,omitempty"`
}

// InitProcessID is the process id of a container's init process.
const InitProcessID = "init"

// ProcessStarted answers MsgNewContainer and MsgExecCmd.
type ProcessStarted struct {
	Pid int `json:"pid"` // pid in the guest's initial pid namespace
	// Started: the container's init was started too (Container.Start).
	Started bool `json:"started,omitempty"`
}

// ContainerRef names a container.
type ContainerRef struct {
	Container string `json:"container"`
}

// ProcessRef names one process of a container.
type ProcessRef struct {
	Container string `json:"container"`
	Process   string `json:"process"`
}

// SignalProcess is MsgSignalProcess's payload. With All set, every process of the container
// receives the signal (runc kill --all).
type SignalProcess struct {
	Container string `json:"container"`
	Process   string `json:"process"`
	Signal    int    `json:"signal"`
	All       bool   `json:"all,omitempty"`
}

// WindowSize is MsgWinSize's payload.
type WindowSize struct {
	Container string `json:"container"`
	Process   string `json:"process"`
	Rows      uint16 `json:"rows"`
	Cols      uint16 `json:"cols"`
}

// ProcessExit is the MsgProcessExit event. The agent sends it only after it sent EOF on the
// process's output streams, and the host reports an exit only once it has seen both.
type ProcessExit struct {
	Container string `json:"container"`
	Process   string `json:"process"`
	// ExitCode follows the shell convention: the exit status, or 128+signal when killed.
	ExitCode int `json:"exitCode"`
	// Signal is the terminating signal, 0 when the process exited normally.
	Signal int `json:"signal,omitempty"`
	// Error explains a process that never ran (e.g. executable not found: ExitCode 127).
	Error string `json:"error,omitempty"`
	// OOMKilled is set on a container's init that the kernel's OOM killer ended (or whose
	// container had an OOM kill when it ended): what clients report as OOMKilled.
	OOMKilled bool `json:"oomKilled,omitempty"`
}

// ProcessList answers MsgListProcesses: guest pids of the container's processes.
type ProcessList struct {
	Pids []int `json:"pids"`
	// Processes describes the pids (any order, any subset) for `runv ps`. It is optional:
	// an agent may leave it out, or leave out a process that exited meanwhile; the host
	// then shows the command it knows (the process it started) or none.
	Processes []ProcessInfo `json:"processes,omitempty"`
}

// ProcessInfo describes one process of a ProcessList.
type ProcessInfo struct {
	Pid int `json:"pid"`
	// Cmdline is /proc/<pid>/cmdline split at NULs (empty for a kernel thread or a zombie).
	Cmdline []string `json:"cmdline,omitempty"`
}

// UpdateContainer is MsgUpdateContainer's payload.
type UpdateContainer struct {
	Container string                `json:"container"`
	Resources *specs.LinuxResources `json:"resources"`
}

// Stats answers MsgStats (cgroup figures of the container inside the guest). The fields
// after Pids are optional: an agent may leave them out.
type Stats struct {
	CPUUsageNanos    uint64 `json:"cpuUsageNanos"`
	MemoryUsageBytes uint64 `json:"memoryUsageBytes"`
	MemoryLimitBytes uint64 `json:"memoryLimitBytes"`
	Pids             uint64 `json:"pids"`

	CPUUserNanos        uint64 `json:"cpuUserNanos,omitempty"`
	CPUSystemNanos      uint64 `json:"cpuSystemNanos,omitempty"`
	CPUPeriods          uint64 `json:"cpuPeriods,omitempty"`
	CPUThrottledPeriods uint64 `json:"cpuThrottledPeriods,omitempty"`
	CPUThrottledNanos   uint64 `json:"cpuThrottledNanos,omitempty"`
	SwapUsageBytes      uint64 `json:"swapUsageBytes,omitempty"`
	SwapLimitBytes      uint64 `json:"swapLimitBytes,omitempty"`
	PidsLimit           uint64 `json:"pidsLimit,omitempty"`
	// MemoryStat is the cgroup's memory.stat (cgroup v2 keys: anon, file, ...).
	MemoryStat map[string]uint64 `json:"memoryStat,omitempty"`
	// MemoryEvents is the cgroup's memory.events (low, high, max, oom, oom_kill).
	MemoryEvents map[string]uint64 `json:"memoryEvents,omitempty"`
}

// Marshal builds a command frame with the given payload (nil: no data).
func Marshal(t MsgType, id uint64, payload any) (ControlFrame, error) {
	f := ControlFrame{Type: t, ID: id}
	if payload == nil {
		return f, nil
	}
	// The guest's own frames on a pod's way to its first container are encoded by hand
	// (encode.go); the rest by encoding/json.
	switch p := payload.(type) {
	case Ready:
		f.Data = p.appendJSON(nil)
		return f, nil
	case VersionInfo:
		f.Data = p.appendJSON(nil)
		return f, nil
	case ProcessStarted:
		f.Data = p.appendJSON(nil)
		return f, nil
	case ProcessExit:
		f.Data = p.appendJSON(nil)
		return f, nil
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return ControlFrame{}, fmt.Errorf("encode %s payload: %w", t, err)
	}
	f.Data = b
	return f, nil
}

// Unmarshal decodes a frame's data into v, classifying bad input as ErrProtocol. It
// decodes as encoding/json does, learning only the types the data contains (unmarshal).
func (f ControlFrame) Unmarshal(v any) error {
	if len(f.Data) == 0 {
		return fmt.Errorf("%w: %s frame (id %d) has no data", ErrProtocol, f.Type, f.ID)
	}
	if err := unmarshal(f.Data, v); err != nil {
		return fmt.Errorf("%w: %s frame (id %d): %v", ErrProtocol, f.Type, f.ID, err)
	}
	return nil
}

// OnlineCPUMem is MsgOnlineCPUMem's payload: the host hot-plugged vCPUs or memory and the
// guest must online them (there is no udev in the guest). The agent waits, with a
// deadline, until CPUs vCPUs are online and at least MemoryMiB of memory blocks are online
// (the kernel adds hot-plugged devices asynchronously after the host's ACPI event); zero
// fields only online what is present. Its reply is OnlineCPUMemResult.
type OnlineCPUMem struct {
	CPUs      int `json:"cpus,omitempty"`
	MemoryMiB int `json:"memoryMiB,omitempty"`
}

// OnlineCPUMemResult answers MsgOnlineCPUMem with what is online afterwards.
type OnlineCPUMemResult struct {
	CPUs      int `json:"cpus"`
	MemoryMiB int `json:"memoryMiB"`
}

// WarmupRequest is MsgWarmup's optional payload.
type WarmupRequest struct {
	// ShareTag, when set, has the agent mount that 9p share at SharePath once the warm-up
	// container is gone: a pooled VM's share device is the one the pod that takes the VM
	// uses, and STARTPOD then finds the share mounted instead of mounting it (5-16 ms under
	// TCG). Only for VMs that are not snapshotted afterwards: templates carry no 9p state.
	ShareTag string `json:"shareTag,omitempty"`
	// Entropy, when set, is mixed into the guest's RNG, which then reseeds (as STARTPOD
	// does), before the warm-up container runs: a pooled clone diverges from its template
	// and from the other clones at once, and the pod's STARTPOD finds the reseed's path
	// already run (under TCG a first run of it costs a clone 10-18 ms).
	Entropy []byte `json:"entropy,omitempty"`
	// Scope limits the warm-up (WarmupFull, the empty scope: all of it). A pool parks every VM with WarmupPod and
	// warms it later (docs/factory.md, "Warming").
	Scope WarmupScope `json:"scope,omitempty"`
	// HostRootfs: the host made the throwaway container's rootfs in the share, at
	// WarmupShareDir/rootfs (MakeWarmupRootfs), and removes it after the answer; the agent
	// only binds the warm-up program onto its /init and unbinds it. With ShareTag only.
	HostRootfs bool `json:"hostRootfs,omitempty"`
	// Settle: once warmed, the agent waits (a few seconds at most) until the guest kernel
	// has run the work its boot and the warm-up left scheduled (the TSC clocksource that
	// replaces tsc-early a second after boot; the release of the warm-up's cgroup). For a
	// VM about to be snapshotted as a template: a clone resumes whatever its template had
	// pending and runs it for the first time (under TCG, translated again) on its pod's
	// critical path.
	Settle bool `json:"settle,omitempty"`
}

// WarmupScope is how much of the path of a pod's start WARMUP runs.
type WarmupScope string

const (
	// WarmupFull runs all of it: the container, an exec into it and the network warm-up.
	WarmupFull WarmupScope = ""
	// WarmupPod runs what STARTPOD runs first (entropy and reseed, the share mounted
	// ahead, the protocol's decoders), and no container.
	WarmupPod WarmupScope = "pod"
	// WarmupContainer adds the throwaway container, created, run and destroyed, without
	// the exec into it and without the network warm-up (a light warm-up, for a pool that
	// ran dry).
	WarmupContainer WarmupScope = "container"
)

// Warmup answers MsgWarmup: how long the throwaway container took, guest monotonic time.
type Warmup struct {
	CreateMillis int64 `json:"createMillis"` // libcontainer create + start
	TotalMillis  int64 `json:"totalMillis"`  // create to destroyed
	// SettleMillis is how long Settle waited; Unsettled names what was still pending when
	// it gave up waiting (empty: all settled).
	SettleMillis int64  `json:"settleMillis,omitempty"`
	Unsettled    string `json:"unsettled,omitempty"`
}
