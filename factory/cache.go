package factory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/logging"
)

// KindCache is the pool kind: VMs from another factory, started ahead of demand.
const KindCache = "cache"

// Default limits of a Cache.
const (
	// DefaultCacheBootTimeout bounds one refill: the base factory's GetVM of a pooled VM.
	DefaultCacheBootTimeout = 2 * time.Minute
	// maxRefillBackoff caps the wait between refills that fail (a broken kernel must not
	// make the pool boot VMs in a tight loop).
	maxRefillBackoff = 30 * time.Second
)

// CacheConfig configures a Cache.
type CacheConfig struct {
	// Size is how many VMs the pool keeps ready (at least 1).
	Size int
	// Dir holds one directory per pooled VM: <Dir>/<name> is the VM's directory and
	// <Dir>/<name>/share its 9p share. A VM's share is renamed onto the requester's share
	// directory when the VM is handed out (QEMU holds the share open by descriptor, so
	// the guest sees whatever is mounted under the new name), so Dir must be on the same
	// filesystem as the pods' directories: under the same --root.
	Dir string
	// CPUs and MemoryMiB size the pooled VMs: the base factory is asked for this size.
	CPUs      int
	MemoryMiB int
	// MaxCPUs and MaxMemoryMiB are what a pooled VM can grow to by hot-plug (q35 VMs booted
	// with room to grow, which implement hypervisor.Hotplugger). 0: no growth, a bigger
	// request goes to Fallback.
	MaxCPUs      int
	MaxMemoryMiB int
	// Fallback serves what the pool cannot: requests bigger than a pooled VM can grow to,
	// requests with kernel parameters (pooled guests booted long ago), and requests that
	// find the pool empty with no refill under way. Nil: the base factory.
	Fallback Factory
	// BootTimeout bounds one refill, and one warm-up. Zero: DefaultCacheBootTimeout.
	BootTimeout time.Duration
	// WarmAtOnce is how many pooled VMs warm up at the same time. Zero: half the host's
	// CPUs, at least one (see Warmer).
	WarmAtOnce int
}

// Warmer is a pooled VM that is warmed once it is in the pool (holder.VM: a throwaway
// container run through its agent, WARMUP; light: the container path only). The pool
// warms its VMs a few at a time (CacheConfig.WarmAtOnce), oldest first, and hands out a
// warm VM while there is one; a request that finds none takes a parked cold one rather
// than wait for a warm-up under way. Once that happened the pool is drained: it warms
// light, and only when the warm-ups keep up with the hand-outs (roomToWarmLocked), until
// every pooled VM is warm, then finishes the light ones with a full warm-up
// (docs/factory.md, "Warming"). A VM that is not a Warmer is warm when it joins. Warm may
// be called again after a light warm-up.
type Warmer interface {
	Warm(ctx context.Context, light bool) (WarmResult, error)
}

// WarmResult is what a warm-up took.
type WarmResult struct {
	Guest agentproto.Warmup `json:"guest"` // the guest's own account (its clock)
	// CPU is the CPU time the VM's QEMU used for it (0: not known). Under load the
	// guest's clock counts the time other processes had the CPU; this does not.
	CPU time.Duration `json:"cpu"`
}

// warmth is how far a pooled VM is warmed.
type warmth int

const (
	cold      warmth = iota // parked, not warmed
	lightWarm               // its container path warmed (a light warm-up)
	fullWarm                // warmed fully, or nothing to warm (not a Warmer)
)

func (w warmth) String() string {
	switch w {
	case cold:
		return "cold"
	case lightWarm:
		return "light"
	default:
		return "full"
	}
}

// Cache keeps Size VMs from a base factory (direct, template, or anything else) booted
// and hands them out at once, refilling in the background. Close kills every pooled VM;
// VMs handed out belong to their requester.
//
// A pool inside one process only helps the requests of that process: runv's pod daemons
// are one process per pod, so `runv manage factory-daemon` runs the pool and hands its
// VMs to pod daemons (factory/factoryd); pod daemons use that daemon, not a Cache.
type Cache struct {
	base     Factory
	fallback Factory
	cfg      CacheConfig
	log      *slog.Logger

	ctx    context.Context // refills; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // refills and pool watchers

	mu       sync.Mutex
	ready    []*pooled // oldest first: the most settled guest goes out first
	booting  int
	warming  int  // warm-ups under way
	waiters  int  // requests waiting in take for a VM to hand out
	drained  bool // a VM went out cold since every pooled VM was last warm: warm light
	seq      int
	closed   bool
	lastErr  error         // last refill failure, for requests that waited in vain
	failures int           // consecutive refill failures (backoff)
	changed  chan struct{} // closed and replaced on every change of the pool

	// The pace of a drained pool (roomToWarmLocked): when the last VM went out, the
	// interval before it, a refill's and a warm-up's usual wall time (moving averages),
	// and the timer that resumes the warm-ups once the hand-outs pause.
	now          func() time.Time
	lastTake     time.Time
	takeInterval time.Duration
	refillTook   time.Duration
	warmTook     time.Duration
	resumeWarm   *time.Timer
}

// pooled is a VM waiting in the pool.
type pooled struct {
	name   string
	dir    string
	share  string
	vm     hypervisor.VM
	taken  chan struct{} // closed when it leaves the pool (handed out or discarded)
	warmth warmth
	// warming: a warm-up is under way; the VM is not handed out before it ended.
	warming bool
}

var _ Factory = (*Cache)(nil)

// NewCache starts filling a pool of cfg.Size VMs from base. ctx carries the logger; the
// pool lives until Close.
func NewCache(ctx context.Context, base Factory, cfg CacheConfig) (*Cache, error) {
	switch {
	case base == nil:
		return nil, fmt.Errorf("cache: no base factory: %w", errdefs.ErrInvalidArgument)
	case cfg.Size < 1:
		return nil, fmt.Errorf("cache: size %d: must be at least 1: %w", cfg.Size, errdefs.ErrInvalidArgument)
	case cfg.Dir == "":
		return nil, fmt.Errorf("cache: no directory for the pooled VMs: %w", errdefs.ErrInvalidArgument)
	case cfg.CPUs < 1 || cfg.MemoryMiB < 1:
		return nil, fmt.Errorf("cache: pooled VM size %d vCPUs, %d MiB: both must be set: %w", cfg.CPUs, cfg.MemoryMiB, errdefs.ErrInvalidArgument)
	case cfg.MaxCPUs != 0 && cfg.MaxCPUs < cfg.CPUs, cfg.MaxMemoryMiB != 0 && cfg.MaxMemoryMiB < cfg.MemoryMiB:
		return nil, fmt.Errorf("cache: hot-plug limits %d vCPUs, %d MiB are below the pooled size %d, %d: %w",
			cfg.MaxCPUs, cfg.MaxMemoryMiB, cfg.CPUs, cfg.MemoryMiB, errdefs.ErrInvalidArgument)
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = DefaultCacheBootTimeout
	}
	if cfg.WarmAtOnce <= 0 {
		cfg.WarmAtOnce = max(1, runtime.NumCPU()/2)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c := &Cache{base: base, fallback: cfg.Fallback, cfg: cfg, changed: make(chan struct{}), now: time.Now}
	if c.fallback == nil {
		c.fallback = base
	}
	c.log = logging.G(ctx).With("factory", KindCache)
	c.ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	c.mu.Lock()
	c.fillLocked()
	c.mu.Unlock()
	return c, nil
}

// Name is KindCache.
func (c *Cache) Name() string { return KindCache }

// CacheStatus is a snapshot of the pool.
type CacheStatus struct {
	Size int `json:"size"`
	// Ready VMs are warm: a pod's first container in one costs what a later one does.
	Ready int `json:"ready"`
	// Light VMs had a light warm-up (the container path; not the exec into a container
	// nor the network), their full warm-up queued or under way: as good as Ready for a pod
	// whose container runs without network.
	Light int `json:"light"`
	// Cold VMs are booted and parked, their warm-up queued or under way; one is handed out
	// only when no Ready or Light VM is left.
	Cold    int    `json:"cold"`
	Booting int    `json:"booting"`
	LastErr string `json:"lastError,omitempty"`
}

// Status reports the pool's state.
func (c *Cache) Status() CacheStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := CacheStatus{Size: c.cfg.Size, Ready: c.countLocked(fullWarm), Light: c.countLocked(lightWarm), Cold: c.countLocked(cold), Booting: c.booting}
	if c.lastErr != nil {
		s.LastErr = c.lastErr.Error()
	}
	return s
}

// countLocked counts the pooled VMs warmed to w.
func (c *Cache) countLocked(w warmth) int {
	n := 0
	for _, p := range c.ready {
		if p.warmth == w {
			n++
		}
	}
	return n
}

// WaitFull returns once Size VMs are ready and warm, or with the last refill error once a
// refill failed, or when ctx ends.
func (c *Cache) WaitFull(ctx context.Context) error {
	for {
		c.mu.Lock()
		full, closed, failures, lastErr, changed := c.countLocked(fullWarm) >= c.cfg.Size, c.closed, c.failures, c.lastErr, c.changed
		c.mu.Unlock()
		switch {
		case closed:
			return fmt.Errorf("cache: %w", ErrClosed)
		case full:
			return nil
		case failures > 0:
			return fmt.Errorf("cache: refill failed: %w", lastErr)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("cache: waiting for the pool to fill: %w", ctx.Err())
		}
	}
}

// broadcastLocked wakes everyone waiting for a change of the pool.
func (c *Cache) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// fillLocked starts refills until ready + booting is Size again. After failures it waits
// (backoff) before the next attempt, on a timer so that Close still stops it at once.
func (c *Cache) fillLocked() {
	for !c.closed && len(c.ready)+c.booting < c.cfg.Size {
		c.booting++
		c.seq++
		name := "vm" + strconv.Itoa(c.seq)
		var delay time.Duration
		if c.failures > 0 {
			delay = min(maxRefillBackoff, time.Second<<min(c.failures-1, 5))
		}
		c.wg.Add(1)
		go c.refill(name, delay)
	}
}

func (c *Cache) refill(name string, delay time.Duration) {
	defer c.wg.Done()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
		}
	}
	start := time.Now()
	p, err := c.boot(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.booting--
	defer c.broadcastLocked()
	if err != nil {
		if !c.closed {
			c.failures++
			c.lastErr = err
			c.log.Warn("pool refill failed", "vm", name, "error", err, "failures", c.failures)
			c.fillLocked()
		}
		return
	}
	if c.closed {
		c.discard(p)
		return
	}
	c.failures, c.lastErr = 0, nil
	c.refillTook = average(c.refillTook, time.Since(start))
	p.warmth = fullWarm
	if _, ok := p.vm.(Warmer); ok {
		p.warmth = cold
	}
	c.ready = append(c.ready, p)
	c.log.Debug("pool refilled", "vm", name, "duration", time.Since(start), "pooled", len(c.ready), "cold", p.warmth == cold)
	c.wg.Add(1)
	go c.watch(p, p.taken)
	c.startWarmupsLocked()
}

// startWarmupsLocked starts warm-ups while fewer than WarmAtOnce run: of cold VMs first,
// oldest first, light while the pool is drained; then, once no VM is cold, the full
// warm-up of the light ones. At most a few at once: on a small host a warm-up takes a CPU
// for a few hundred milliseconds (TCG translating the container path's code), and several
// at once would each take longer to finish, beside the pods they are for.
func (c *Cache) startWarmupsLocked() {
	if c.waiters > 0 {
		return // a VM that can go out now goes to the request waiting for it
	}
	if c.drained && c.booting == 0 && c.warming == 0 && c.countLocked(cold) == 0 {
		c.drained = false // the pool is full and every VM in it warm: finish the light ones
	}
	if c.drained && !c.roomToWarmLocked() {
		return
	}
	for _, want := range []warmth{cold, lightWarm} {
		for _, p := range c.ready {
			if c.closed || c.warming >= c.cfg.WarmAtOnce {
				return
			}
			if p.warmth != want || p.warming {
				continue
			}
			if want == lightWarm && c.drained {
				return
			}
			p.warming = true
			c.warming++
			c.wg.Add(1)
			go c.warmUp(p, c.drained)
		}
	}
}

// roomToWarmLocked reports whether a drained pool may start a warm-up now: only if the
// pool keeps up with the hand-outs with a warm-up added, that is when they come further
// apart than a refill and a warm-up last together (each VM that goes out costs a refill,
// and both run beside the pods), or have paused for as long as a warm-up lasts.
// Otherwise it arms a timer for the moment the pause will be long enough. Under pods
// started back to back the warm-ups cannot keep up (on 2 cores a light warm-up's ~0.25 s of
// CPU and a refill's ~0.15 s against ~0.25 s per pod): they would only take CPU from the
// pod being started and from the refill the next pod waits for, and keep their VM from
// being handed out while they run; every pod then gets a cold VM, at once
// (docs/performance.md, "Bursts, stop 14").
func (c *Cache) roomToWarmLocked() bool {
	if c.warmTook == 0 || c.takeInterval >= c.refillTook+c.warmTook {
		return true
	}
	pause := c.now().Sub(c.lastTake)
	if pause >= c.warmTook {
		return true
	}
	if c.resumeWarm == nil && !c.closed {
		c.resumeWarm = time.AfterFunc(c.warmTook-pause, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.resumeWarm = nil
			c.startWarmupsLocked()
		})
	}
	return false
}

// average moves a running average a quarter of the way towards a new sample (the first
// sample sets it): recent ones count most, one outlier does not swing it far.
func average(avg, sample time.Duration) time.Duration {
	if avg == 0 {
		return sample
	}
	return avg + (sample-avg)/4
}

// warmUp warms one pooled VM, light or fully. A failed warm-up leaves the VM as good as
// a cold one: it stays in the pool, counted warm (there is nothing more to do for it),
// and the failure is logged.
func (c *Cache) warmUp(p *pooled, light bool) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.BootTimeout)
	start := time.Now()
	w, err := p.vm.(Warmer).Warm(ctx, light)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.warming--
	p.warming = false
	// Light ones are what a drained pool would start; a full one (before any light one)
	// is an estimate on the safe side.
	if err == nil && (light || c.warmTook == 0) {
		c.warmTook = average(c.warmTook, time.Since(start))
	}
	switch {
	case err != nil:
		p.warmth = fullWarm
		if !c.closed {
			c.log.Warn("warm-up of a pooled vm failed; it stays pooled cold", "vm", p.name, "error", err)
		}
	case light:
		p.warmth = lightWarm
	default:
		p.warmth = fullWarm
	}
	if err == nil {
		c.log.Debug("pooled vm warmed", "vm", p.name, "light", light, "duration", time.Since(start), "qemu_cpu", w.CPU,
			"guest_create_ms", w.Guest.CreateMillis, "guest_total_ms", w.Guest.TotalMillis)
	}
	c.broadcastLocked()
	c.startWarmupsLocked()
}

// boot gets one VM for the pool from the base factory.
func (c *Cache) boot(name string) (*pooled, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, err
	}
	p := &pooled{name: name, dir: filepath.Join(c.cfg.Dir, name), taken: make(chan struct{})}
	p.share = filepath.Join(p.dir, "share")
	removeVMDir(p.dir) // a leftover of a killed predecessor
	if err := os.MkdirAll(p.share, 0o700); err != nil {
		return nil, fmt.Errorf("pooled vm %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.BootTimeout)
	defer cancel()
	vm, err := c.base.GetVM(ctx, Request{ID: name, Dir: p.dir, ShareDir: p.share, CPUs: c.cfg.CPUs, MemoryMiB: c.cfg.MemoryMiB})
	if err != nil {
		removeVMDir(p.dir)
		return nil, fmt.Errorf("pooled vm %s: %w", name, err)
	}
	p.vm = vm
	return p, nil
}

// watch drops a pooled VM that dies while it waits (and refills), so that nobody is
// handed a dead VM.
func (c *Cache) watch(p *pooled, taken <-chan struct{}) {
	defer c.wg.Done()
	select {
	case <-taken:
		return
	case <-p.vm.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.ready {
		if q == p {
			c.ready = append(c.ready[:i], c.ready[i+1:]...)
			c.log.Warn("pooled vm exited while waiting; replacing it", "vm", p.name, "console", p.vm.ConsoleLog())
			close(p.taken)
			removeVMDir(p.dir)
			c.fillLocked()
			c.broadcastLocked()
			return
		}
	}
}

// discard kills a VM that leaves the pool unused and removes its directory.
func (c *Cache) discard(p *pooled) {
	select {
	case <-p.taken:
	default:
		close(p.taken)
	}
	p.vm.Kill()
	removeVMDir(p.dir)
}

// take removes a VM from the pool: the oldest warm one, else the oldest cold one whose
// warm-up has not started (a pod that finds the pool drained then runs its first container
// in it, on its own CPU, while the warm-up under way goes on for the next pod: waiting
// for that warm-up would leave a CPU idle). If every pooled VM is warming up, or none is
// pooled but refills are under way, it waits for one (it is never further from ready than
// a new boot would be); it returns nil when the pool is empty with nothing coming.
func (c *Cache) take(ctx context.Context) (*pooled, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return nil, ErrClosed
		}
		if i := c.pickLocked(); i >= 0 {
			p := c.ready[i]
			c.ready = append(c.ready[:i:i], c.ready[i+1:]...)
			close(p.taken)
			// The last interval alone, not an average: the first pods of a burst after a
			// calm spell must not count as far apart.
			now := c.now()
			if !c.lastTake.IsZero() {
				c.takeInterval = now.Sub(c.lastTake)
			}
			c.lastTake = now
			if p.warmth == cold {
				c.drained = true
				c.log.Info("pool drained: handing out a vm before its warm-up", "vm", p.name, "warming", c.warming)
			}
			c.fillLocked()
			c.startWarmupsLocked() // what waited for this request to be served
			c.broadcastLocked()
			return p, nil
		}
		// A refill that already failed will not bring one soon: do not wait for it.
		if (c.booting == 0 && c.warming == 0) || c.failures > 0 {
			return nil, nil
		}
		changed := c.changed
		c.waiters++
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			c.mu.Lock()
			c.waiters--
			c.startWarmupsLocked()
			return nil, ctx.Err()
		}
		c.mu.Lock()
		c.waiters--
	}
}

// pickLocked is the index in ready of the VM to hand out (take), -1 if none can go now:
// the oldest of the warmest VMs that is not warming up.
func (c *Cache) pickLocked() int {
	best := -1
	for i, p := range c.ready {
		if !p.warming && (best < 0 || p.warmth > c.ready[best].warmth) {
			best = i
		}
	}
	return best
}

// put returns an unused VM to the front of the pool. Its replacement may be booting
// already: the pool then holds one more than Size for a while, which beats killing a
// ready VM.
func (c *Cache) put(p *pooled) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.discard(p)
		return
	}
	p.taken = make(chan struct{})
	c.ready = append([]*pooled{p}, c.ready...)
	c.wg.Add(1)
	go c.watch(p, p.taken)
	c.startWarmupsLocked()
	c.broadcastLocked()
}

// sizeOf is the size a request asks for, with the pool's size for what it leaves open.
func (c *Cache) sizeOf(req Request) (cpus, mem int) {
	cpus, mem = req.CPUs, req.MemoryMiB
	if cpus == 0 {
		cpus = c.cfg.CPUs
	}
	if mem == 0 {
		mem = c.cfg.MemoryMiB
	}
	return cpus, mem
}

// GetVM hands out a pooled VM: at once when one is ready. Its share directory is renamed
// onto req.ShareDir (which must not exist or be an empty directory); its own directory
// stays in the pool's Dir until the VM exits, when its logs move to req.Dir. A request
// bigger than the pooled VMs is grown by hot-plug when they allow it (the returned VM then
// reports Grown: the guest must online the new CPUs), else served by Fallback.
func (c *Cache) GetVM(ctx context.Context, req Request) (hypervisor.VM, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	cpus, mem := c.sizeOf(req)
	fits := cpus <= c.cfg.CPUs && mem <= c.cfg.MemoryMiB
	growable := cpus <= max(c.cfg.CPUs, c.cfg.MaxCPUs) && mem <= max(c.cfg.MemoryMiB, c.cfg.MaxMemoryMiB)
	log := logging.G(ctx).With("factory", KindCache, "vm", req.ID)
	switch {
	case len(req.KernelParams) > 0:
		log.Debug("request has kernel parameters: not from the pool")
		return c.fallback.GetVM(ctx, req)
	case !fits && !growable:
		log.Debug("request is bigger than the pooled VMs can grow", "cpus", cpus, "memory_mib", mem)
		return c.fallback.GetVM(ctx, req)
	}
	asked := time.Now()
	p, err := c.take(ctx)
	if err != nil {
		return nil, fmt.Errorf("get vm %s: %w", req.ID, err)
	}
	if p == nil {
		log.Info("pool empty: booting outside the pool", "last_error", c.Status().LastErr)
		return c.fallback.GetVM(ctx, req)
	}
	grown := false
	if !fits {
		if err := grow(ctx, p.vm, c.cfg, cpus, mem); err != nil {
			// Partly grown is not the pool's size any more: do not put it back.
			log.Warn("growing a pooled VM failed: booting outside the pool", "error", err)
			c.discard(p)
			return c.fallback.GetVM(ctx, req)
		}
		grown = true
	}
	if err := moveShare(p.share, req.ShareDir); err != nil {
		log.Warn("cannot hand the pooled VM's share to the request: booting outside the pool", "error", err)
		if grown {
			c.discard(p)
		} else {
			c.put(p)
		}
		return c.fallback.GetVM(ctx, req)
	}
	// What a pod of a burst got: a warm VM or a cold one, at once or after a wait for a
	// warm-up or a refill (docs/performance.md, "Bursts, stop 14").
	log.Debug("handed out a pooled VM", "pooled", p.name, "warmth", p.warmth, "waited", time.Since(asked), "grown", grown)
	v := &CachedVM{VM: p.vm, id: req.ID, grown: grown, Pooled: p.name}
	// The VM is the requester's now: Close does not wait for it.
	go func() {
		<-p.vm.Done()
		keepLogs(p.dir, req.Dir)
		removeVMDir(p.dir)
	}()
	return v, nil
}

// grow hot-plugs vCPUs and memory into vm until it has cpus and mem.
func grow(ctx context.Context, vm hypervisor.VM, cfg CacheConfig, cpus, mem int) error {
	hp, ok := vm.(hypervisor.Hotplugger)
	if !ok {
		return fmt.Errorf("vm %s cannot be hot-plugged (q35 booted with room to grow only): %w", vm.ID(), errdefs.ErrNotImplemented)
	}
	if cpus > cfg.CPUs {
		if err := hp.HotplugCPUs(ctx, cpus); err != nil {
			return fmt.Errorf("grow to %d vCPUs: %w", cpus, err)
		}
	}
	if mem > cfg.MemoryMiB {
		if err := hp.HotplugMemory(ctx, mem); err != nil {
			return fmt.Errorf("grow to %d MiB: %w", mem, err)
		}
	}
	return nil
}

// moveShare moves a pooled VM's share directory to dst, replacing dst if it is an empty
// directory. QEMU's 9p server resolves every path from a descriptor of the directory it
// opened at start, so the guest keeps seeing the same directory under its new name, and
// what the pod mounts below dst appears in the guest.
//
// A share that is a mount of its own (hypervisor/qemu binds it on itself and makes it
// shared where its file system does not propagate mounts, so that the pod's later mounts
// reach QEMU's mount namespace) cannot be renamed (EBUSY): the mount is moved instead, and
// the directory under it stays in the pooled VM's directory.
func moveShare(src, dst string) error {
	if isMountRoot(src) {
		if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("move the mount %s to %s: %w", src, dst, err)
		}
		if err := unix.Mount(src, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move the mount %s to %s: %w", src, dst, err)
		}
		return nil
	}
	// Not os.Rename: it refuses to replace a directory, which rename(2) does when empty.
	if err := unix.Rename(src, dst); err != nil {
		return fmt.Errorf("rename %s to %s (the pool and the pods must share a filesystem): %w", src, dst, err)
	}
	return nil
}

// isMountRoot reports whether dir is the root of a mount.
func isMountRoot(dir string) bool {
	var stx unix.Statx_t
	if unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx) != nil {
		return false
	}
	return stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// removeVMDir removes a pooled VM's directory once its VM is gone. Its share may still be
// mounted there: the launcher releases that mount when QEMU exits, but not if it was killed
// (a holder SIGKILLed).
func removeVMDir(dir string) {
	mounts.UnmountUnder(dir)
	os.RemoveAll(dir)
}

// keepLogs moves a pooled VM's logs into the requester's VM directory once the VM is gone,
// where the direct kind leaves them, if that directory still exists.
func keepLogs(from, to string) {
	if fi, err := os.Stat(to); err != nil || !fi.IsDir() {
		return
	}
	for _, f := range []string{"console.log", "qemu.log"} {
		os.Rename(filepath.Join(from, f), filepath.Join(to, f))
	}
}

// Close stops refilling, kills every pooled VM and waits for refills under way to end.
// VMs handed out are not touched.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.resumeWarm != nil {
		c.resumeWarm.Stop()
		c.resumeWarm = nil
	}
	ready := c.ready
	c.ready = nil
	c.broadcastLocked()
	c.mu.Unlock()
	c.cancel()
	for _, p := range ready {
		c.discard(p)
	}
	c.wg.Wait()
	return nil
}

// CachedVM is a VM handed out by a Cache.
type CachedVM struct {
	hypervisor.VM
	id    string
	grown bool
	// Pooled is the name the VM had in the pool (its directory under CacheConfig.Dir).
	Pooled string
}

// ID is the requester's id, not the pool's name.
func (v *CachedVM) ID() string { return v.id }

// Grown reports whether CPUs or memory were hot-plugged to fit the request.
func (v *CachedVM) Grown() bool { return v.grown }

// Restored passes on the pooled VM's nature: a pooled clone is still a clone.
func (v *CachedVM) Restored() bool { return v.VM.Restored() }

// Unwrap returns the VM the pool held.
func (v *CachedVM) Unwrap() hypervisor.VM { return v.VM }

// NICs passes on the pooled VM's network devices (hypervisor.NetworkDevices).
func (v *CachedVM) NICs() []hypervisor.NIC {
	if n, ok := v.VM.(hypervisor.NetworkDevices); ok {
		return n.NICs()
	}
	return nil
}
