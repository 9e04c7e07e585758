package agent

import (
	"strings"

	"github.com/runv-project/runv/api/agentproto"
)

// bootFlags are the agent's settings on the kernel command line. The kernel does not pass
// parameters with a dot in their name to init's argv or environment, so the agent reads
// /proc/cmdline itself.
type bootFlags struct {
	// Debug (runv.debug=1) logs every frame and libcontainer's debug output to the console.
	Debug bool
	// Probe (runv.probe=1) prints ProbeMarker on the console and powers off at once: the
	// host boots such a guest to find out whether its accelerator really runs one.
	Probe bool
	// Trace (runv.trace=1) logs one line per container operation with the time of each of
	// its steps, libcontainer's and its init's included (stepTrace).
	Trace bool
	// LibcontainerExec (runv.exec=libcontainer) runs every exec through libcontainer's
	// `runc init` instead of the exec helper: the path before the helper, for comparison.
	LibcontainerExec bool
	// OneShotExec (runv.exec=oneshot) runs every exec through a one-shot exec helper
	// instead of the container's exec server (execserver_linux.go), for comparison.
	OneShotExec bool
	// LibcontainerCreate (runv.create=libcontainer) creates every container with
	// libcontainer's `runc init` instead of the create engine (createengine_linux.go), for
	// comparison. runv.exec=libcontainer implies it: the engine's containers exec through
	// the exec helper only.
	LibcontainerCreate bool
	// ControlPort and StreamPort are the ports' device nodes under /dev when the host
	// names them (agentproto.PortsParam, "runv.ports=vport0p1,vport0p2"): both or neither.
	ControlPort, StreamPort string
}

// ProbeMarker is the console line a probe boot prints.
const ProbeMarker = "RUNV-PROBE-OK"

func parseCmdline(cmdline string) bootFlags {
	var f bootFlags
	for _, word := range strings.Fields(cmdline) {
		key, value, _ := strings.Cut(word, "=")
		on := value == "1" || value == "true" || value == "yes" || value == "on"
		switch key {
		case "runv.debug":
			f.Debug = on
		case "runv.probe":
			f.Probe = on
		case "runv.trace":
			f.Trace = on
		case "runv.exec":
			f.LibcontainerExec = value == "libcontainer"
			f.OneShotExec = value == "oneshot"
		case "runv.create":
			f.LibcontainerCreate = value == "libcontainer"
		case agentproto.PortsParam:
			f.ControlPort, f.StreamPort = "", ""
			if ctl, stream, ok := strings.Cut(value, ","); ok && isPortNode(ctl) && isPortNode(stream) {
				f.ControlPort, f.StreamPort = ctl, stream
			}
		}
	}
	return f
}

// isPortNode reports whether name is a virtio-serial port's node name, vport<N>p<M>:
// nothing else under /dev is opened as a port.
func isPortNode(name string) bool {
	rest, ok := strings.CutPrefix(name, "vport")
	if !ok {
		return false
	}
	dev, port, ok := strings.Cut(rest, "p")
	return ok && isDigits(dev) && isDigits(port)
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
