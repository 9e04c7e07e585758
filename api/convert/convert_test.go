package convert

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"reflect"
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
)

// guestRequest is the create engine's request as the agent makes it from the spec itself,
// with the guest's fields set as fillGuest sets them.
func guestRequest(t *testing.T, id string, spec *specs.Spec) (*ExecRequest, *configs.Config) {
	t.Helper()
	adjusted, err := AdjustSpec(spec, guest(id))
	if err != nil {
		t.Fatal(err)
	}
	ReadonlyDeviceBinds(adjusted, adjusted.Root.Path, func(p string) (fs.FileInfo, error) {
		t.Fatalf("lstat %s for a spec the host converted", p)
		return nil, nil
	})
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: id, Spec: adjusted})
	if err != nil {
		t.Fatal(err)
	}
	var late []configs.Rlimit
	cfg.Rlimits, late = SplitLateRlimits(cfg.Rlimits)
	lp, err := NewProcess(adjusted.Process, true)
	if err != nil {
		t.Fatal(err)
	}
	if reason := CreateFallback(cfg, lp); reason != "" {
		t.Fatalf("the create engine does not do %s", reason)
	}
	req, err := CreateExecRequest(id, cfg, lp, late, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req, cfg
}

// fillGuest sets the guest's fields of a create request.
func fillGuest(req *ExecRequest) {
	req.LastCap, req.ConsoleFD, req.Rows, req.Cols, req.TraceSteps = 40, 6, 24, 80, true
	req.Create.StartFD, req.Create.CgroupDir = 7, "/sys/fs/cgroup/runv/@spare1"
}

// The request the agent makes from the host's conversion, after the wire, is the one it
// makes from the spec itself, byte for byte; so is the cgroup configuration.
func TestForGuestIsTheGuestsConversion(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*specs.Spec)
	}{
		{"runc's example spec", func(*specs.Spec) {}},
		{"no terminal, no cgroup namespace", func(s *specs.Spec) {
			s.Process.Terminal = false
			s.Linux.Namespaces = slicesDeleteType(s.Linux.Namespaces, specs.CgroupNamespace)
		}},
		{"user, rlimits, caps, sysctls, hostname, a bind", func(s *specs.Spec) {
			s.Process.User = specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{5, 6}}
			s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_AS", Hard: 1 << 30, Soft: 1 << 30})
			s.Process.Capabilities.Ambient = []string{"CAP_NET_BIND_SERVICE", "CAP_NOT_A_CAPABILITY"}
			s.Process.Env = append(s.Process.Env, "HOME=", "A=1", "A=2")
			s.Hostname = "h"
			s.Linux.Sysctl = map[string]string{"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20"}
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "c/volumes/0", Options: []string{"rbind", "ro", "size=1k"}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := specconv.Example()
			tc.change(spec)
			before, _ := json.Marshal(spec)
			cv, why := ForGuest("c", "c/rootfs", spec, false)
			if cv == nil {
				t.Fatalf("not converted: %s", why)
			}
			if after, _ := json.Marshal(spec); !bytes.Equal(before, after) {
				t.Fatal("ForGuest changed the spec it was given")
			}
			frame, err := agentproto.Marshal(agentproto.MsgNewContainer, 1, agentproto.Container{ID: "c", Rootfs: "c/rootfs", Spec: spec, Converted: cv})
			if err != nil {
				t.Fatal(err)
			}
			// As the agent reads it: the spec kept, decoded when the agent converts it.
			m, err := frame.UnmarshalContainer()
			if err != nil {
				t.Fatal(err)
			}
			if m.Container.Spec != nil {
				t.Fatal("the spec was decoded with the frame: the agent's hand decoder gave the frame up")
			}
			if init := m.InitProcess(); init == nil || !reflect.DeepEqual(init.Args, spec.Process.Args) || init.Terminal != spec.Process.Terminal {
				t.Fatalf("the init's process from the frame %+v, the spec's %+v", init, spec.Process)
			}
			fromHost, err := RequestOf(m.Converted)
			if err != nil {
				t.Fatal(err)
			}
			received, err := m.Spec()
			if err != nil {
				t.Fatal(err)
			}
			own, cfg := guestRequest(t, "c", received)
			fillGuest(fromHost)
			fillGuest(own)
			hostBytes, err := fromHost.Encode()
			if err != nil {
				t.Fatal(err)
			}
			ownBytes, err := own.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(hostBytes, ownBytes) {
				t.Errorf("the request from the host's conversion differs:\n host %q\n own  %q", hostBytes, ownBytes)
			}
			if got := CgroupOf(m.Converted); !reflect.DeepEqual(got, cfg.Cgroups) {
				t.Errorf("cgroup from the host %+v, the guest's %+v", got, cfg.Cgroups)
			}
			if own, _ := DeviceProgram(cfg.Cgroups.Resources.Devices); len(own) == 0 || !bytes.Equal(m.Converted.DeviceProgram, own) {
				t.Errorf("device program from the host %x, the guest's %x", m.Converted.DeviceProgram, own)
			}
		})
	}
}

// A spec with anything only the guest can convert is left to it.
func TestForGuestLeavesGuestStateToTheGuest(t *testing.T) {
	for _, tc := range []struct {
		name   string
		member bool
		change func(*specs.Spec)
	}{
		{"a pod member", true, func(*specs.Spec) {}},
		{"seccomp", false, func(s *specs.Spec) { s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow} }},
		{"privileged", false, func(s *specs.Spec) {
			s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
		}},
		{"net sysctls", false, func(s *specs.Spec) { s.Linux.Sysctl = map[string]string{"net.ipv4.ip_forward": "1"} }},
		{"a read-only path in the rootfs", false, func(s *specs.Spec) { s.Linux.ReadonlyPaths = []string{"/etc/x"} }},
		{"what the create engine does not do", false, func(s *specs.Spec) { s.Process.ApparmorProfile = "p" }},
		{"a memory limit", false, func(s *specs.Spec) {
			limit := int64(64 << 20)
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		}},
		{"an invalid spec", false, func(s *specs.Spec) { s.Process.Args = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := specconv.Example()
			tc.change(spec)
			if cv, why := ForGuest("c", "c/rootfs", spec, tc.member); cv != nil || why == "" {
				t.Errorf("converted on the host (%v, %q)", cv, why)
			}
		})
	}
}

func slicesDeleteType(nss []specs.LinuxNamespace, t specs.LinuxNamespaceType) []specs.LinuxNamespace {
	var out []specs.LinuxNamespace
	for _, ns := range nss {
		if ns.Type != t {
			out = append(out, ns)
		}
	}
	return out
}
