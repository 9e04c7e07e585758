package factory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// DefaultPolicyFile is the factory policy the pod daemon reads when --factory (RUNV_FACTORY)
// does not say otherwise.
const DefaultPolicyFile = "/etc/runv/factory.json"

// Policy is one entry of a factory policy, in runV's format:
//
//	[{"template":true,"cache":2,"cpu":1,"memory":128}]
//
// Each entry makes VMs of one size: cloned from a template when Template is set, else booted
// directly; Cache > 0 asks for a pool of that many ready VMs in front of it (see Options.Cache).
// A pool refills from a template unless its entry says "template":false (ParsePolicy).
type Policy struct {
	Template bool `json:"template"`
	Cache    int  `json:"cache"`
	// CPU and Memory (MiB) size the entry's VMs; 0 takes the daemon's --default_cpus and
	// --default_memory.
	CPU    int `json:"cpu"`
	Memory int `json:"memory"`
	// Name names the entry's template (a runv extension); empty: derived from the machine
	// and size, e.g. microvm-1c-128m.
	Name string `json:"name,omitempty"`
}

// Factory settings, the values of --factory besides a policy.
const (
	SettingDirect   = KindDirect   // direct boots, whatever DefaultPolicyFile says
	SettingTemplate = KindTemplate // one template of the default size
)

// ParseSetting turns a --factory value into a policy and says where it came from:
//
//	""          DefaultPolicyFile if it exists, else direct boots
//	"direct"    direct boots
//	"template"  one template entry of the default size
//	"[...]"     an inline policy (JSON, as in the file)
//	other       the path of a policy file
//
// A nil policy means direct boots.
func ParseSetting(setting string) (policy []Policy, source string, err error) {
	switch s := strings.TrimSpace(setting); {
	case s == "":
		p, err := LoadPolicy(DefaultPolicyFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "default (no " + DefaultPolicyFile + ")", nil
		}
		return p, DefaultPolicyFile, err
	case s == SettingDirect:
		return nil, "--factory " + s, nil
	case s == SettingTemplate:
		return []Policy{{Template: true}}, "--factory " + s, nil
	case strings.HasPrefix(s, "[") || strings.HasPrefix(s, "{"):
		p, err := ParsePolicy([]byte(s))
		return p, "--factory (inline policy)", err
	default:
		p, err := LoadPolicy(s)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, s, fmt.Errorf("--factory %q: not direct, template, a JSON policy or an existing policy file: %w", setting, errdefs.ErrInvalidArgument)
		}
		return p, s, err
	}
}

// LoadPolicy reads a policy file. A missing file is an error wrapping fs.ErrNotExist.
func LoadPolicy(path string) ([]Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("factory policy: %w", err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy parses a policy: a JSON array of entries, or a single entry. Unknown fields
// are refused: a misspelt "templat" must not silently mean direct boots.
func ParsePolicy(b []byte) ([]Policy, error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		b = append(append([]byte{'['}, b...), ']')
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var entries []policyEntry
	if err := dec.Decode(&entries); err != nil {
		return nil, fmt.Errorf("factory policy: %w (expected e.g. [{\"template\":true,\"cache\":2,\"cpu\":1,\"memory\":128}]): %w", err, errdefs.ErrInvalidArgument)
	}
	if dec.More() {
		return nil, fmt.Errorf("factory policy: trailing data after the JSON array: %w", errdefs.ErrInvalidArgument)
	}
	p := make([]Policy, len(entries))
	for i, e := range entries {
		p[i] = e.policy()
	}
	seen := map[[2]int]bool{}
	for i, e := range p {
		switch {
		case e.CPU < 0 || e.Memory < 0 || e.Cache < 0:
			return nil, fmt.Errorf("factory policy entry %d: negative cpu, memory or cache: %w", i, errdefs.ErrInvalidArgument)
		case e.Name != "" && !e.Template:
			return nil, fmt.Errorf("factory policy entry %d: a name without \"template\":true: %w", i, errdefs.ErrInvalidArgument)
		}
		if e.Name != "" {
			if err := ValidateTemplateName(e.Name); err != nil {
				return nil, fmt.Errorf("factory policy entry %d: %w", i, err)
			}
		}
		size := [2]int{e.CPU, e.Memory}
		if seen[size] {
			return nil, fmt.Errorf("factory policy entry %d: a second entry for %d vCPUs and %d MiB: %w", i, e.CPU, e.Memory, errdefs.ErrInvalidArgument)
		}
		seen[size] = true
	}
	return p, nil
}

// policyEntry is a Policy as written, where an absent "template" differs from false (its
// Template shadows the embedded one in JSON).
type policyEntry struct {
	Policy
	Template *bool `json:"template"`
}

// policy resolves the entry's kind. A pool that does not say refills from a template: when
// pods arrive faster than one VM boots, a refill by a cold boot (~0.7 s under TCG) leaves
// each pod of a burst waiting for a boot, a clone is there in ~30 ms and is warmed before it
// is handed out; idle, a warmed clone serves a pod as fast as a warmed direct boot and
// costs half its memory (docs/performance.md). "template":false keeps directly booted VMs.
func (e policyEntry) policy() Policy {
	p := e.Policy
	p.Template = p.Cache > 0
	if e.Template != nil {
		p.Template = *e.Template
	}
	return p
}

// DefaultSize is the VM size of pods that ask for none under policy: its first entry's,
// where it says; cpus and memoryMiB otherwise.
func DefaultSize(policy []Policy, cpus, memoryMiB int) (int, int) {
	if len(policy) > 0 {
		if policy[0].CPU > 0 {
			cpus = policy[0].CPU
		}
		if policy[0].Memory > 0 {
			memoryMiB = policy[0].Memory
		}
	}
	return cpus, memoryMiB
}

// Options are what New builds factories from.
type Options struct {
	Launcher hypervisor.Launcher
	// Base is the VM configuration: kernel, initrd, machine, accelerator, default size.
	Base hypervisor.Config
	// TemplateDir holds the templates (DefaultTemplateDir if empty).
	TemplateDir string
	// Cache makes the cache kind: it puts a pool of p.Cache ready VMs in front of an
	// entry's factory (template or direct). Pod daemons take theirs from the factory
	// daemon (factoryd.Wrapper). Without it, a policy's cache field is validated, and
	// ignored with a warning.
	Cache func(ctx context.Context, base Factory, p Policy) (Factory, error)
}

// New builds the factory a policy describes: direct boots for an empty policy, otherwise one
// factory per entry, chosen by the size a request asks for (the first entry serves requests
// that ask for none). Requests of a size no entry has are booted directly.
func New(ctx context.Context, o Options, policy []Policy) (Factory, error) {
	direct := NewDirect(o.Launcher, o.Base)
	if len(policy) == 0 {
		return direct, nil
	}
	r := &bySize{fallback: direct}
	for i, p := range policy {
		base := entryBase(o.Base, p)
		var f Factory = NewDirect(o.Launcher, base)
		if p.Template {
			t, err := NewTemplate(o.Launcher, base, TemplateOptions{Dir: o.TemplateDir, Name: p.Name, Create: true, Fallback: f})
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("factory policy entry %d: %w", i, err)
			}
			f = t
		}
		if p.Cache > 0 {
			if o.Cache == nil {
				logging.G(ctx).Warn("factory policy: cache is not available in this runv: ignored", "entry", i, "cache", p.Cache)
			} else {
				c, err := o.Cache(ctx, f, p)
				if err != nil {
					f.Close()
					r.Close()
					return nil, fmt.Errorf("factory policy entry %d: cache: %w", i, err)
				}
				f = c
			}
		}
		r.entries = append(r.entries, sized{cpus: base.CPUs, memoryMiB: base.MemoryMiB, f: f})
	}
	if len(r.entries) == 1 {
		// No choice to make; the direct fallback is not needed (a template has its own).
		direct.Close()
		return r.entries[0].f, nil
	}
	return r, nil
}

// entryBase is the VM configuration of policy entry p's VMs.
func entryBase(base hypervisor.Config, p Policy) hypervisor.Config {
	if p.CPU > 0 {
		base.CPUs = p.CPU
	}
	if p.Memory > 0 {
		base.MemoryMiB = p.Memory
	}
	return templateDefaults(base)
}

// EntryFor is the index of the policy entry whose factory New gives a request of cpus and
// memoryMiB (0: the default), or -1 when the request is booted directly. base is New's
// Options.Base.
func EntryFor(policy []Policy, base hypervisor.Config, cpus, memoryMiB int) int {
	switch len(policy) {
	case 0:
		return -1
	case 1:
		return 0 // New's only entry takes every request
	}
	sizes := make([]sized, len(policy))
	for i, p := range policy {
		b := entryBase(base, p)
		sizes[i] = sized{cpus: b.CPUs, memoryMiB: b.MemoryMiB}
	}
	i, _, _ := entryOfSize(sizes, cpus, memoryMiB)
	return i
}

type sized struct {
	cpus, memoryMiB int
	f               Factory
}

// entryOfSize is the index of the entry a request of cpus and mem (0: the first entry's)
// goes to, or -1 for none, and the size asked for with the defaults filled in.
func entryOfSize(entries []sized, cpus, mem int) (int, int, int) {
	if cpus == 0 && mem == 0 {
		return 0, entries[0].cpus, entries[0].memoryMiB
	}
	if cpus == 0 {
		cpus = entries[0].cpus
	}
	if mem == 0 {
		mem = entries[0].memoryMiB
	}
	for i, e := range entries {
		if e.cpus == cpus && e.memoryMiB == mem {
			return i, cpus, mem
		}
	}
	return -1, cpus, mem
}

// bySize sends each request to the entry of its size.
type bySize struct {
	entries  []sized
	fallback Factory
}

func (b *bySize) GetVM(ctx context.Context, req Request) (hypervisor.VM, error) {
	i, cpus, mem := entryOfSize(b.entries, req.CPUs, req.MemoryMiB)
	if i >= 0 {
		return b.entries[i].f.GetVM(ctx, req)
	}
	// Direct boots take the size from the request: fill in what it left to the default.
	req.CPUs, req.MemoryMiB = cpus, mem
	return b.fallback.GetVM(ctx, req)
}

// Name is the first entry's kind.
func (b *bySize) Name() string { return b.entries[0].f.Name() }

func (b *bySize) Close() error {
	var errs []error
	for _, e := range b.entries {
		errs = append(errs, e.f.Close())
	}
	return errors.Join(append(errs, b.fallback.Close())...)
}
