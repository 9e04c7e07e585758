package factory

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/agentclient"
	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// DefaultTemplateDir is where templates live by default (the default --root's templates/).
const DefaultTemplateDir = "/run/runv/@templates"

// Files of a template directory <dir>/<name>/.
const (
	templateMemory       = "memory"        // guest RAM (memory-backend-file)
	templateState        = "state"         // device state (migration stream, RAM excluded)
	templateTranslations = "translations"  // QEMU's code translated for the guest (TCG; optional)
	templateInfo         = "template.json" // TemplateInfo
	templateConsole      = "console.log"   // the template VM's boot console, for diagnosis
)

// Defaults of the launcher, applied here so that a template's recorded facts are concrete.
const (
	defaultCPUs      = 1
	defaultMemoryMiB = 128
)

// ErrTemplateStale classifies a template that was made for something other than what a pod
// needs now (another kernel, initrd, QEMU, machine or size): it is refused, never cloned.
var ErrTemplateStale = fmt.Errorf("template out of date: %w", errdefs.ErrFailedPrecondition)

// FileFacts identify a file the template depends on. Size and modification time (not a
// hash) because they are checked on every pod start and `make install` changes both.
type FileFacts struct {
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
}

func (f FileFacts) String() string {
	return fmt.Sprintf("%s (%d bytes, modified %s)", f.Path, f.Size, f.ModTime.UTC().Format(time.RFC3339))
}

func (f FileFacts) same(o FileFacts) bool {
	return f.Path == o.Path && f.Size == o.Size && f.ModTime.Equal(o.ModTime)
}

// TemplateInfo is a template's template.json: what it was made from and with, and what it
// costs. A template is only cloned for a pod whose facts are the same.
type TemplateInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`

	Kernel FileFacts `json:"kernel"`
	Initrd FileFacts `json:"initrd"`
	// QEMU is the emulator binary; QEMUVersion its `--version` line. The device state only
	// loads into the QEMU (and machine version) that wrote it.
	QEMU        FileFacts `json:"qemu"`
	QEMUVersion string    `json:"qemuVersion"`
	// Machine is what the user asked for (microvm, q35); MachineType what ran (pc-q35-7.2).
	Machine     string `json:"machine"`
	MachineType string `json:"machineType"`
	Accel       string `json:"accel"`

	CPUs         int      `json:"cpus"`
	MemoryMiB    int      `json:"memoryMiB"`
	MaxCPUs      int      `json:"maxCPUs,omitempty"`
	MaxMemoryMiB int      `json:"maxMemoryMiB,omitempty"`
	KernelParams []string `json:"kernelParams,omitempty"`
	// ShareMounted tells that the template was saved with the pod share mounted in the
	// guest (the QEMU carries it over: hypervisor.Snapshot.ShareKept), so that no clone
	// mounts it again.
	ShareMounted bool `json:"shareMounted,omitempty"`
	// TranslationsBytes is the size of the code translated during the template's warm-up
	// that clones restore (hypervisor.Snapshot.Translations); 0: none was saved.
	TranslationsBytes int64 `json:"translationsBytes,omitempty"`
	// AgentProtocol is the agent protocol version the template's agent spoke (it passed the
	// handshake of a runv speaking this version).
	AgentProtocol int `json:"agentProtocol"`

	// Measured when the template was made.
	BootMillis      int64 `json:"bootMillis"`      // cold boot until the agent answered
	SaveMillis      int64 `json:"saveMillis"`      // park, stop, save the state, quit
	MemoryAllocated int64 `json:"memoryAllocated"` // bytes of the RAM file in tmpfs
	StateBytes      int64 `json:"stateBytes"`
}

// TemplateName is the default name of the template for cfg: machine and size, so that pods
// of different sizes get templates of their own.
func TemplateName(cfg hypervisor.Config) string {
	cfg = templateDefaults(cfg)
	name := fmt.Sprintf("%s-%dc-%dm", cfg.Machine, cfg.CPUs, cfg.MemoryMiB)
	if cfg.MaxCPUs > cfg.CPUs || cfg.MaxMemoryMiB > cfg.MemoryMiB {
		name += fmt.Sprintf("-max%dc-%dm", max(cfg.MaxCPUs, cfg.CPUs), max(cfg.MaxMemoryMiB, cfg.MemoryMiB))
	}
	return name
}

// maxTemplateName is the longest template name, in bytes.
const maxTemplateName = 64

// validTemplateName reports whether name is 1 to 64 letters, digits and . _ + -, not one of
// those four first. A loop, not a regular expression: a package-level one was compiled at
// every start of runv (the CLI, each pod daemon, each holder: 0.17 ms of package init).
func validTemplateName(name string) bool {
	if name == "" || len(name) > maxTemplateName {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '+' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// ValidateTemplateName checks a template name: it becomes a directory name.
func ValidateTemplateName(name string) error {
	if !validTemplateName(name) {
		return fmt.Errorf("template name %q: use up to 64 letters, digits and . _ + - (not first): %w", name, errdefs.ErrInvalidArgument)
	}
	return nil
}

func templateDefaults(cfg hypervisor.Config) hypervisor.Config {
	if cfg.Machine == "" {
		cfg.Machine = hypervisor.MachineMicroVM
	}
	if cfg.Accel == "" {
		cfg.Accel = hypervisor.AccelAuto
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = defaultCPUs
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = defaultMemoryMiB
	}
	if cfg.QEMU == "" {
		cfg.QEMU = hypervisor.DefaultQEMU()
	}
	return cfg
}

// currentFacts are the facts a template for cfg must have been made with. They are cheap
// (three stat calls): they are computed for every pod.
func currentFacts(cfg hypervisor.Config) (TemplateInfo, error) {
	cfg = templateDefaults(cfg)
	info := TemplateInfo{
		Machine: cfg.Machine, Accel: cfg.Accel,
		CPUs: cfg.CPUs, MemoryMiB: cfg.MemoryMiB, MaxCPUs: cfg.MaxCPUs, MaxMemoryMiB: cfg.MaxMemoryMiB,
		KernelParams: cfg.KernelParams, AgentProtocol: agentproto.Version,
	}
	var err error
	if info.Kernel, err = factsOf("kernel", cfg.Kernel); err != nil {
		return info, err
	}
	if info.Initrd, err = factsOf("initrd", cfg.Initrd); err != nil {
		return info, err
	}
	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return info, fmt.Errorf("qemu %s: %w: %w", cfg.QEMU, err, errdefs.ErrInvalidArgument)
	}
	if info.QEMU, err = factsOf("qemu", qemu); err != nil {
		return info, err
	}
	return info, nil
}

func factsOf(what, path string) (FileFacts, error) {
	if path == "" {
		return FileFacts{}, fmt.Errorf("no %s configured: %w", what, errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return FileFacts{}, fmt.Errorf("%s %s: %w", what, path, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return FileFacts{}, fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	return FileFacts{Path: abs, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// qemuVersion is the first line of `qemu --version`.
func qemuVersion(ctx context.Context, qemu string) (string, error) {
	out, err := exec.CommandContext(ctx, qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", qemu, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// Check refuses the template for a pod whose facts (currentFacts) differ, saying what
// differs and how to recreate it. The error wraps ErrTemplateStale.
func (t *TemplateInfo) Check(want TemplateInfo) error {
	var made, uses string
	switch {
	case !t.Kernel.same(want.Kernel):
		made, uses = "kernel "+t.Kernel.String(), want.Kernel.String()
	case !t.Initrd.same(want.Initrd):
		made, uses = "initrd "+t.Initrd.String(), want.Initrd.String()
	case !t.QEMU.same(want.QEMU):
		made, uses = "QEMU "+t.QEMU.String()+" ["+t.QEMUVersion+"]", want.QEMU.String()
	case t.Machine != want.Machine:
		made, uses = "machine "+t.Machine, want.Machine
	case want.Accel != hypervisor.AccelAuto && t.Accel != want.Accel:
		made, uses = "accelerator "+t.Accel, want.Accel
	case t.CPUs != want.CPUs || t.MaxCPUs != want.MaxCPUs:
		made, uses = fmt.Sprintf("%d vCPUs (max %d)", t.CPUs, t.MaxCPUs), fmt.Sprintf("%d (max %d)", want.CPUs, want.MaxCPUs)
	case t.MemoryMiB != want.MemoryMiB || t.MaxMemoryMiB != want.MaxMemoryMiB:
		made, uses = fmt.Sprintf("%d MiB of memory (max %d)", t.MemoryMiB, t.MaxMemoryMiB), fmt.Sprintf("%d (max %d)", want.MemoryMiB, want.MaxMemoryMiB)
	case strings.Join(t.KernelParams, " ") != strings.Join(want.KernelParams, " "):
		made, uses = fmt.Sprintf("kernel parameters %q", t.KernelParams), fmt.Sprintf("%q", want.KernelParams)
	case t.AgentProtocol != want.AgentProtocol:
		made, uses = fmt.Sprintf("agent protocol %d", t.AgentProtocol), fmt.Sprintf("%d", want.AgentProtocol)
	default:
		return nil
	}
	return fmt.Errorf("template %s was made with %s, this pod uses %s: recreate it with 'runv manage create-template %s': %w",
		t.Name, made, uses, createFlags(want, t.Name), ErrTemplateStale)
}

// createFlags are the create-template flags that make the template a pod with facts want
// can use (kernel and initrd come from the global flags, as for the pod).
func createFlags(want TemplateInfo, name string) string {
	f := fmt.Sprintf("--machine %s --cpus %d --memory %d", want.Machine, want.CPUs, want.MemoryMiB)
	cfg := hypervisor.Config{Machine: want.Machine, CPUs: want.CPUs, MemoryMiB: want.MemoryMiB, MaxCPUs: want.MaxCPUs, MaxMemoryMiB: want.MaxMemoryMiB}
	if name != TemplateName(cfg) {
		f += " --name " + name
	}
	return f
}

// Template is the template factory: it clones a template for each VM, creating the template
// on first use, and boots directly (through its fallback) whatever it cannot clone: a
// stale template, a request with kernel parameters, a failed clone. A pod always starts.
type Template struct {
	templater hypervisor.Templater
	base      hypervisor.Config
	opts      TemplateOptions

	mu     sync.Mutex
	closed bool
}

// TemplateOptions configure a template factory.
type TemplateOptions struct {
	// Dir holds the templates (DefaultTemplateDir if empty). It is made a tmpfs mount when it
	// is not on tmpfs already.
	Dir string
	// Name is the template's name; empty: TemplateName of the base configuration.
	Name string
	// Create makes a missing template on first use (under a lock: concurrent pods wait for
	// one creation). Without it a missing template means direct boots.
	Create bool
	// Fallback gives the VMs no template can: nil means direct boots with the same
	// launcher and base configuration.
	Fallback Factory
}

var _ Factory = (*Template)(nil)

// NewTemplate returns a factory that clones VMs from templates made with l from base
// (kernel, initrd, machine, accelerator, size). l must implement hypervisor.Templater.
func NewTemplate(l hypervisor.Launcher, base hypervisor.Config, opts TemplateOptions) (*Template, error) {
	tl, ok := l.(hypervisor.Templater)
	if !ok {
		return nil, fmt.Errorf("factory %s: launcher %T cannot snapshot VMs: %w", KindTemplate, l, errdefs.ErrNotImplemented)
	}
	if opts.Dir == "" {
		opts.Dir = DefaultTemplateDir
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("template directory %s: %w", opts.Dir, err)
	}
	opts.Dir = filepath.Clean(dir)
	if opts.Name != "" {
		if err := ValidateTemplateName(opts.Name); err != nil {
			return nil, err
		}
	}
	if opts.Fallback == nil {
		opts.Fallback = NewDirect(l, base)
	}
	return &Template{templater: tl, base: base, opts: opts}, nil
}

// Name is KindTemplate.
func (t *Template) Name() string { return KindTemplate }

// templateName is the name of the factory's template.
func (t *Template) templateName() string {
	if t.opts.Name != "" {
		return t.opts.Name
	}
	return TemplateName(t.base)
}

// Close makes later GetVM calls fail and closes the fallback. Templates stay on disk (they
// serve other pods) and given-out VMs run on.
func (t *Template) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return t.opts.Fallback.Close()
}

// GetVM clones the template for req's configuration, or boots directly when it cannot.
func (t *Template) GetVM(ctx context.Context, req Request) (hypervisor.VM, error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("get vm %s: %w", req.ID, ErrClosed)
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	log := logging.G(ctx)
	if len(req.KernelParams) > 0 {
		// A clone's kernel booted long ago, with the template's command line.
		log.Info("kernel parameters requested: booting directly instead of cloning", "params", req.KernelParams)
		return t.opts.Fallback.GetVM(ctx, req)
	}
	cfg := templateDefaults(req.config(t.base))
	if base := templateDefaults(t.base); cfg.CPUs != base.CPUs || cfg.MemoryMiB != base.MemoryMiB {
		// One template serves one size (as in runV): a pod that needs another size boots
		// directly rather than creating a template per size it ever sees.
		log.Info("pod needs another VM size than the template's: booting directly",
			"cpus", cfg.CPUs, "memoryMiB", cfg.MemoryMiB, "templateCPUs", base.CPUs, "templateMemoryMiB", base.MemoryMiB)
		return t.opts.Fallback.GetVM(ctx, req)
	}
	name := t.templateName()
	start := time.Now()
	vm, err := t.clone(ctx, cfg, name)
	if err == nil {
		log.Info("vm cloned from template", "template", name, "took", time.Since(start).Round(time.Millisecond))
		return vm, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("get vm %s: %w", req.ID, err)
	}
	log.Warn("template not used: booting directly", "template", name, "reason", err)
	return t.opts.Fallback.GetVM(ctx, req)
}

func (t *Template) clone(ctx context.Context, cfg hypervisor.Config, name string) (hypervisor.VM, error) {
	want, err := currentFacts(cfg)
	if err != nil {
		return nil, err
	}
	lock, info, err := t.acquire(ctx, cfg, name)
	if err != nil {
		return nil, err
	}
	// Held until the clone has read the state: a template replaced in between would pair
	// one template's RAM with another's device state.
	defer lock.unlock()
	if err := info.Check(want); err != nil {
		return nil, err
	}
	if cfg.Accel == hypervisor.AccelAuto {
		// The clone's CPU state is the template's: it runs under the same accelerator.
		cfg.Accel = info.Accel
	}
	return t.templater.Clone(ctx, cfg, info.snapshot(filepath.Join(t.opts.Dir, name)))
}

// acquire returns the template's info under a shared lock, creating the template first if it
// is missing and creation is enabled.
func (t *Template) acquire(ctx context.Context, cfg hypervisor.Config, name string) (*fileLock, *TemplateInfo, error) {
	dir := t.opts.Dir
	if t.opts.Create {
		if _, err := ensureTmpfs(dir); err != nil {
			return nil, nil, err
		}
	} else if _, err := os.Stat(dir); err != nil {
		return nil, nil, fmt.Errorf("template %s not found (%v): create it with 'runv manage create-template': %w", name, err, errdefs.ErrNotFound)
	}
	lock, err := lockPath(ctx, lockFile(dir, name), false)
	if err != nil {
		return nil, nil, err
	}
	info, err := ReadTemplate(dir, name)
	if err == nil || !errors.Is(err, errdefs.ErrNotFound) || !t.opts.Create {
		if err != nil {
			lock.unlock()
			return nil, nil, err
		}
		return lock, info, nil
	}
	lock.unlock()

	// Missing: create it, unless another pod did while we changed locks, or creating it
	// failed for these very facts a moment ago (every pod would pay a template boot that
	// fails again: one per createRetry is enough to notice a fix).
	if err := recentFailure(dir, name, cfg); err != nil {
		return nil, nil, err
	}
	if _, err := createTemplate(ctx, t.templater, cfg, dir, name, false, func(msg string, args ...any) {
		logging.G(ctx).Info(msg, append([]any{"template", name}, args...)...)
	}); err != nil && !errors.Is(err, errdefs.ErrAlreadyExists) {
		if ctx.Err() == nil {
			recordFailure(dir, name, cfg, err)
		}
		return nil, nil, err
	}
	if lock, err = lockPath(ctx, lockFile(dir, name), false); err != nil {
		return nil, nil, err
	}
	if info, err = ReadTemplate(dir, name); err != nil {
		lock.unlock()
		return nil, nil, err
	}
	return lock, info, nil
}

func (t *TemplateInfo) snapshot(dir string) hypervisor.Snapshot {
	snap := hypervisor.Snapshot{
		Memory: filepath.Join(dir, templateMemory), State: filepath.Join(dir, templateState),
		MachineType: t.MachineType, Accel: t.Accel,
	}
	if t.TranslationsBytes > 0 {
		snap.Translations = filepath.Join(dir, templateTranslations)
	}
	return snap
}

func lockFile(dir, name string) string { return filepath.Join(dir, "."+name+".lock") }

// createRetry is how long a failed automatic creation of a template is not retried for the
// same facts (kernel, initrd, QEMU, size...). create-template always tries.
const createRetry = 5 * time.Minute

func failureFile(dir, name string) string { return filepath.Join(dir, "."+name+".failed") }

// creationFailure is a failureFile's content.
type creationFailure struct {
	Facts TemplateInfo `json:"facts"`
	Error string       `json:"error"`
	At    time.Time    `json:"at"`
}

// recordFailure notes that creating the template for cfg failed.
func recordFailure(dir, name string, cfg hypervisor.Config, err error) {
	facts, ferr := currentFacts(cfg)
	if ferr != nil {
		return
	}
	facts.Name = name
	b, _ := json.Marshal(creationFailure{Facts: facts, Error: err.Error(), At: time.Now().UTC()})
	tmp := failureFile(dir, name) + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		os.Rename(tmp, failureFile(dir, name))
	}
}

// recentFailure returns an error when creating the template for cfg failed within
// createRetry with the same facts.
func recentFailure(dir, name string, cfg hypervisor.Config) error {
	b, err := os.ReadFile(failureFile(dir, name))
	if err != nil {
		return nil
	}
	var f creationFailure
	if json.Unmarshal(b, &f) != nil || time.Since(f.At) > createRetry {
		return nil
	}
	want, err := currentFacts(cfg)
	if err != nil || f.Facts.Check(want) != nil {
		return nil // something changed: worth another try
	}
	return fmt.Errorf("creating template %s failed %s ago with the same kernel, initrd and QEMU (%s): not retried automatically before %s; retry now with 'runv manage create-template %s': %w",
		name, time.Since(f.At).Round(time.Second), f.Error, f.At.Add(createRetry).Local().Format(time.TimeOnly),
		createFlags(want, name), errdefs.ErrFailedPrecondition)
}

// ReadTemplate reads template name's info from dir. A missing template is ErrNotFound.
func ReadTemplate(dir, name string) (*TemplateInfo, error) {
	if err := ValidateTemplateName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, name, templateInfo))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("template %s not found in %s: %w", name, dir, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	var info TemplateInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("template %s: %s is corrupt (%v): remove it with 'runv manage remove-template --name %s': %w",
			name, filepath.Join(dir, name, templateInfo), err, name, errdefs.ErrFailedPrecondition)
	}
	return &info, nil
}

// CreateOptions configure CreateTemplate.
type CreateOptions struct {
	// Dir holds the templates (DefaultTemplateDir if empty); made a tmpfs if needed.
	Dir string
	// Name of the template; empty: TemplateName(cfg).
	Name string
	// Progress receives progress messages (slog style: message, then key/value pairs).
	Progress func(msg string, args ...any)
}

// CreateTemplate makes (or remakes) a template for cfg (kernel, initrd, machine,
// accelerator, size) with l, which must implement hypervisor.Templater. An existing template
// of that name is replaced by rename once the new one is complete: clones running from the
// old one keep its RAM mapped and are not disturbed.
func CreateTemplate(ctx context.Context, l hypervisor.Launcher, cfg hypervisor.Config, opts CreateOptions) (*TemplateInfo, error) {
	tl, ok := l.(hypervisor.Templater)
	if !ok {
		return nil, fmt.Errorf("launcher %T cannot snapshot VMs: %w", l, errdefs.ErrNotImplemented)
	}
	cfg = templateDefaults(cfg)
	if opts.Dir == "" {
		opts.Dir = DefaultTemplateDir
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("template directory %s: %w", opts.Dir, err)
	}
	name := opts.Name
	if name == "" {
		name = TemplateName(cfg)
	}
	if err := ValidateTemplateName(name); err != nil {
		return nil, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	mounted, err := ensureTmpfs(dir)
	if err != nil {
		return nil, err
	}
	if mounted {
		progress("mounted a tmpfs for templates", "dir", dir)
	}
	return createTemplate(ctx, tl, cfg, dir, name, true, progress)
}

// createTemplate makes template name under its exclusive lock. Without replace, a template
// that exists by the time the lock is held is left alone (ErrAlreadyExists): another pod
// made it while this one waited.
func createTemplate(ctx context.Context, tl hypervisor.Templater, cfg hypervisor.Config, dir, name string, replace bool,
	progress func(string, ...any)) (*TemplateInfo, error) {
	lock, err := lockPath(ctx, lockFile(dir, name), true)
	if err != nil {
		return nil, err
	}
	defer lock.unlock()
	if !replace {
		if _, err := ReadTemplate(dir, name); err == nil {
			return nil, fmt.Errorf("template %s: %w", name, errdefs.ErrAlreadyExists)
		}
	}
	info, err := currentFacts(cfg)
	if err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	if info.QEMUVersion, err = qemuVersion(ctx, info.QEMU.Path); err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	info.Name = name

	// Leftovers of creations or removals of this template that died half-way: under the
	// exclusive lock nobody else is working on them. ('@' cannot occur in a name, so the
	// pattern matches no other template's.)
	for _, kind := range []string{".new-", ".old-"} {
		left, _ := filepath.Glob(filepath.Join(dir, kind+name+"@*"))
		for _, l := range left {
			os.RemoveAll(l)
		}
	}
	// Everything is made in a staging directory and renamed into place when complete, so
	// that no reader ever sees a half-made template and no file clones map is rewritten.
	staging, err := os.MkdirTemp(dir, ".new-"+name+"@")
	if err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	defer os.RemoveAll(staging) // after a successful rename it is gone already
	// The template VM's sockets, logs and (empty, never mounted) share live in a short
	// temporary directory: a state root that is fine for pods can be too deep for the
	// sockets of a VM under <root>/@templates/.new-<name>@<n>/.
	run, err := os.MkdirTemp("", "runv-tmpl")
	if err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	defer os.RemoveAll(run)
	vmDir, share := filepath.Join(run, "vm"), filepath.Join(run, "share")
	for _, d := range []string{vmDir, share} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("create template %s: %w", name, err)
		}
	}
	vmCfg := cfg
	vmCfg.ID, vmCfg.Dir, vmCfg.ShareDir = "template-"+name, vmDir, share

	progress("booting template VM", "machine", cfg.Machine, "cpus", cfg.CPUs, "memoryMiB", cfg.MemoryMiB,
		"kernel", info.Kernel.Path, "initrd", info.Initrd.Path)
	start := time.Now()
	var parked time.Time
	snap, err := tl.CreateTemplate(ctx, vmCfg, hypervisor.Snapshot{
		Memory: filepath.Join(staging, templateMemory), State: filepath.Join(staging, templateState),
		Translations: filepath.Join(staging, templateTranslations),
	}, func(ctx context.Context, ch *hypervisor.Channels, p hypervisor.Park) error {
		err := parkAgent(ctx, ch, name, p)
		parked = time.Now()
		if err == nil {
			progress("agent answered; saving the template", "boot", parked.Sub(start).Round(time.Millisecond))
		}
		return err
	})
	if err != nil {
		// The console is removed with the run directory: quote its end.
		return nil, fmt.Errorf("create template %s: %w (guest console: %s)", name, err, consoleSummary(filepath.Join(vmDir, "console.log")))
	}
	info.Created = time.Now().UTC()
	info.MachineType, info.Accel, info.ShareMounted = snap.MachineType, snap.Accel, snap.ShareKept
	info.BootMillis = parked.Sub(start).Milliseconds()
	info.SaveMillis = time.Since(parked).Milliseconds()
	info.MemoryAllocated = allocated(snap.Memory)
	if st, err := os.Stat(snap.State); err == nil {
		info.StateBytes = st.Size()
	}
	if snap.Translations != "" {
		if st, err := os.Stat(snap.Translations); err == nil {
			info.TranslationsBytes = st.Size()
		}
	}
	b, err := json.MarshalIndent(&info, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(staging, templateInfo), append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	if b, err := os.ReadFile(filepath.Join(vmDir, "console.log")); err == nil {
		os.WriteFile(filepath.Join(staging, templateConsole), b, 0o600)
	}
	if err := install(staging, filepath.Join(dir, name)); err != nil {
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	os.Remove(failureFile(dir, name))
	progress("template ready", "dir", filepath.Join(dir, name), "took", time.Since(start).Round(time.Millisecond),
		"ramFileMiB", fmt.Sprintf("%.1f", float64(info.MemoryAllocated)/(1<<20)), "stateKiB", info.StateBytes>>10,
		"translationsMiB", fmt.Sprintf("%.1f", float64(info.TranslationsBytes)/(1<<20)))
	return &info, nil
}

// parkAgent brings a template's agent to rest: READY, then the version handshake (a template
// of an agent this runv cannot talk to is of no use), then a warm-up. The client closes the
// channels when done, and the agent waits for the next host. No STARTPOD.
//
// With p.ShareKept, the warm-up mounts the pod share first (as a pooled VM's does) and runs its
// container from it: every clone then finds the share mounted, on its own directory, and
// its STARTPOD skips the 9p mount, which is ~25 ms of a clone's start under TCG.
//
// The warm-up runs a throwaway container through a pod's whole path once. What those paths
// left in guest memory is in every clone: the agent's lazily built state (encoding/json's
// decoders of the pod's requests, libcontainer's), its grown heap and mapped pages, the
// guest kernel's caches. So is, with runv's QEMU under TCG, the code QEMU translated for
// them (p.BeginWarmup marks where it starts; hypervisor.Snapshot.Translations). Every
// clone's STARTPOD and first container then have less to do (docs/performance.md,
// "Template clone start", "Translations restored into template clones"). A failed warm-up
// is logged, and the template is saved as it is: as good as one never warmed.
func parkAgent(ctx context.Context, ch *hypervisor.Channels, name string, p hypervisor.Park) error {
	c := agentclient.New(ch, agentclient.Options{PodID: "template-" + name, Logf: func(format string, args ...any) {
		logging.G(ctx).Warn(fmt.Sprintf(format, args...))
	}})
	defer c.Close()
	ready, err := c.WaitReady(ctx)
	if err != nil {
		return err
	}
	logging.G(ctx).Debug("template agent ready", "template", name, "boot_steps", ready.BootSteps)
	if _, err := c.Handshake(ctx); err != nil {
		return err
	}
	var w agentproto.Warmup
	// Settle: the snapshot is taken right after the answer, and what the guest still had
	// scheduled then, every clone would run again (WarmupRequest.Settle).
	req := agentproto.WarmupRequest{Settle: true}
	if p.ShareKept {
		req.ShareTag = agentproto.ShareTag
	}
	// What the emulator translates from here on is what clones restore: the warm-up's paths
	// are a pod's, the boot's are not.
	if err := p.BeginWarmup(ctx); err != nil {
		return err
	}
	if err := c.Call(ctx, agentproto.MsgWarmup, req, &w); err != nil {
		logging.G(ctx).Warn("template warm-up failed; saving the template unwarmed", "template", name, "error", err)
	} else {
		logging.G(ctx).Info("template warmed up", "template", name, "guest_create_ms", w.CreateMillis, "guest_total_ms", w.TotalMillis,
			"guest_settle_ms", w.SettleMillis)
		if w.Unsettled != "" {
			logging.G(ctx).Warn("template saved with guest work pending, which every clone will run", "template", name, "pending", w.Unsettled)
		}
	}
	return nil
}

// consoleSummary picks what explains a failed boot from a guest console log: the kernel's
// or the agent's last words if it has some, else the last lines.
func consoleSummary(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(string(b), "\r", ""), "\n"), "\n")
	var key []string
	for _, l := range lines {
		if strings.Contains(l, "Kernel panic") || strings.Contains(l, "FATAL") || strings.HasPrefix(l, "panic:") {
			key = append(key, strings.TrimSpace(l))
		}
	}
	if len(key) == 0 {
		key = lines[max(len(lines)-5, 0):]
	}
	return strings.Join(key[:min(len(key), 5)], " | ")
}

// install moves a complete staging directory to dst, replacing what is there by rename.
func install(staging, dst string) error {
	old := ""
	if _, err := os.Lstat(dst); err == nil {
		old = filepath.Join(filepath.Dir(dst), ".old-"+filepath.Base(dst)+"@"+randSuffix())
		if err := os.Rename(dst, old); err != nil {
			return fmt.Errorf("move the old template aside: %w", err)
		}
	}
	if err := os.Rename(staging, dst); err != nil {
		if old != "" {
			os.Rename(old, dst)
		}
		return fmt.Errorf("install the template: %w", err)
	}
	if old != "" {
		// Running clones keep their mappings of the old RAM file.
		os.RemoveAll(old)
	}
	return nil
}

func randSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// allocated is the space a file takes (a RAM file is sparse: only what the guest touched).
func allocated(path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// RemoveTemplate removes template name from dir. Clones running from it are not disturbed:
// they keep their private mappings of its RAM.
func RemoveTemplate(ctx context.Context, dir, name string) error {
	if err := ValidateTemplateName(name); err != nil {
		return err
	}
	path := filepath.Join(dir, name)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("template %s not found in %s: %w", name, dir, errdefs.ErrNotFound)
	}
	lock, err := lockPath(ctx, lockFile(dir, name), true)
	if err != nil {
		return err
	}
	defer lock.unlock()
	// Rename first: a reader never sees a half-removed template.
	gone := filepath.Join(dir, ".old-"+name+"@"+randSuffix())
	if err := os.Rename(path, gone); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("template %s not found in %s: %w", name, dir, errdefs.ErrNotFound)
		}
		return fmt.Errorf("remove template %s: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove template %s: %w", name, err)
	}
	// Lockers check that the file they locked is still the lock file (lockPath).
	os.Remove(lockFile(dir, name))
	return nil
}

// RemoveAllTemplates removes every template in dir, leftovers of interrupted creations, and
// the tmpfs runv mounted on dir (lazily: clones may still map files in it). It must not
// run while a template is being created.
func RemoveAllTemplates(ctx context.Context, dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real // mountinfo names the real path
	}
	names, err := ListTemplates(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, n := range names {
		if err := RemoveTemplate(ctx, dir, n); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	if ownTmpfs(dir) {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount the template tmpfs %s: %w", dir, err))
		}
	}
	if len(errs) == 0 {
		os.Remove(dir) // only if empty
	}
	return names, errors.Join(errs...)
}

// ListTemplates returns the names of the templates in dir, sorted.
func ListTemplates(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates in %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && ValidateTemplateName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// TemplateStatus is a template and whether a pod configured like cfg could use it.
type TemplateStatus struct {
	Info *TemplateInfo
	// Stale is why a pod with the current configuration would refuse it (empty: usable).
	Stale string
}

// StatTemplates reads every template in dir and checks it against cfg's facts.
func StatTemplates(dir string, cfg hypervisor.Config) ([]TemplateStatus, error) {
	names, err := ListTemplates(dir)
	if err != nil {
		return nil, err
	}
	var out []TemplateStatus
	for _, n := range names {
		info, err := ReadTemplate(dir, n)
		if err != nil {
			out = append(out, TemplateStatus{Info: &TemplateInfo{Name: n}, Stale: err.Error()})
			continue
		}
		st := TemplateStatus{Info: info}
		c := cfg
		c.Machine, c.CPUs, c.MemoryMiB, c.MaxCPUs, c.MaxMemoryMiB = info.Machine, info.CPUs, info.MemoryMiB, info.MaxCPUs, info.MaxMemoryMiB
		if want, err := currentFacts(c); err != nil {
			st.Stale = err.Error()
		} else if err := info.Check(want); err != nil {
			st.Stale = err.Error()
		}
		out = append(out, st)
	}
	return out, nil
}
