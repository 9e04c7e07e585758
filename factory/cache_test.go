package factory

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// fakeVM is a VM that exists only in memory.
type fakeVM struct {
	id       string
	dir      string
	done     chan struct{}
	killOnce sync.Once

	mu   sync.Mutex
	cpus int
	mem  int
}

func newFakeVM(req Request) *fakeVM {
	return &fakeVM{id: req.ID, dir: req.Dir, done: make(chan struct{}), cpus: req.CPUs, mem: req.MemoryMiB}
}

func (v *fakeVM) ID() string { return v.id }
func (v *fakeVM) Pid() int   { return 0 }
func (v *fakeVM) Channels(context.Context) (*hypervisor.Channels, error) {
	return nil, errors.New("fake")
}
func (v *fakeVM) Done() <-chan struct{}          { return v.done }
func (v *fakeVM) Shutdown(context.Context) error { return v.Kill() }
func (v *fakeVM) Kill() error                    { v.killOnce.Do(func() { close(v.done) }); return nil }
func (v *fakeVM) ConsoleLog() string             { return filepath.Join(v.dir, "console.log") }
func (v *fakeVM) Accel() string                  { return hypervisor.AccelTCG }
func (v *fakeVM) Restored() bool                 { return false }
func (v *fakeVM) Grown() bool                    { return false }
func (v *fakeVM) killed() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// growableVM is a fakeVM that can be hot-plugged.
type growableVM struct{ *fakeVM }

func (v growableVM) HotplugCPUs(_ context.Context, total int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cpus = total
	return nil
}

func (v growableVM) HotplugMemory(_ context.Context, total int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mem = total
	return nil
}

// warmableVM is a fakeVM that is warmed in the pool (Warmer): a Warm waits until the
// test lets warm-ups end (release) or the VM dies; lights records each call's light.
type warmableVM struct {
	*fakeVM
	started, release chan struct{}
	startOnce        *sync.Once
	lights           *[]bool
}

func (v warmableVM) Warm(ctx context.Context, light bool) (WarmResult, error) {
	v.mu.Lock()
	*v.lights = append(*v.lights, light)
	v.mu.Unlock()
	v.startOnce.Do(func() { close(v.started) })
	select {
	case <-v.release:
		return WarmResult{Guest: agentproto.Warmup{CreateMillis: 1}}, nil
	case <-v.done:
		return WarmResult{}, errors.New("vm gone")
	case <-ctx.Done():
		return WarmResult{}, ctx.Err()
	}
}

// warmups returns the light flag of every Warm so far.
func (v warmableVM) warmups() []bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]bool(nil), *v.lights...)
}

func (v warmableVM) warming() bool {
	select {
	case <-v.started:
		return true
	default:
		return false
	}
}

// fakeFactory hands out fake VMs and records what it was asked.
type fakeFactory struct {
	name     string
	growable bool
	// warmable VMs are Warmers; warmables holds them in the order they were made.
	warmable  bool
	warmables []warmableVM
	warmAll   bool // every warm-up ends at once, from now on (releaseAll)
	// boots, when set, holds every GetVM until the test sends on it.
	boots chan struct{}

	mu   sync.Mutex
	fail error
	reqs []Request
	vms  []*fakeVM
}

func (f *fakeFactory) GetVM(_ context.Context, req Request) (hypervisor.VM, error) {
	if f.boots != nil {
		<-f.boots
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.fail != nil {
		return nil, f.fail
	}
	if _, err := os.Stat(req.Dir); err != nil {
		return nil, err
	}
	vm := newFakeVM(req)
	f.vms = append(f.vms, vm)
	switch {
	case f.growable:
		return growableVM{vm}, nil
	case f.warmable:
		w := warmableVM{fakeVM: vm, started: make(chan struct{}), release: make(chan struct{}), startOnce: &sync.Once{}, lights: &[]bool{}}
		if f.warmAll {
			close(w.release)
		}
		f.warmables = append(f.warmables, w)
		return w, nil
	}
	return vm, nil
}

// releaseAll ends every warm-up not ended yet, and those to come at once.
func (f *fakeFactory) releaseAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.warmAll = true
	for _, w := range f.warmables {
		select {
		case <-w.release:
		default:
			close(w.release)
		}
	}
}

func (f *fakeFactory) warmableVM(i int) warmableVM {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.warmables[i]
}

func (f *fakeFactory) Name() string { return f.name }
func (f *fakeFactory) Close() error { return nil }

func (f *fakeFactory) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func (f *fakeFactory) vm(i int) *fakeVM {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vms[i]
}

func (f *fakeFactory) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func waitFull(t *testing.T, c *Cache) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitFull(ctx); err != nil {
		t.Fatal(err)
	}
}

// podDirs makes a requester's VM and (empty) share directories, as the supervisor does.
func podDirs(t *testing.T, id string) Request {
	t.Helper()
	base := t.TempDir()
	req := Request{ID: id, Dir: filepath.Join(base, "vm"), ShareDir: filepath.Join(base, "share")}
	for _, d := range []string{req.Dir, req.ShareDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return req
}

func newTestCache(t *testing.T, base Factory, cfg CacheConfig) *Cache {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "pool")
	}
	if cfg.CPUs == 0 {
		cfg.CPUs, cfg.MemoryMiB = 1, 128
	}
	c, err := NewCache(context.Background(), base, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCacheHandsOutPooledVMAndRefills(t *testing.T) {
	base := &fakeFactory{name: KindDirect}
	c := newTestCache(t, base, CacheConfig{Size: 2})
	waitFull(t, c)
	if n := base.count(); n != 2 {
		t.Fatalf("base asked for %d VMs, want 2", n)
	}
	base.mu.Lock()
	reqs := append([]Request(nil), base.reqs...)
	base.mu.Unlock()
	for _, r := range reqs {
		if r.CPUs != 1 || r.MemoryMiB != 128 || len(r.KernelParams) != 0 {
			t.Errorf("pooled VM requested as %+v", r)
		}
	}
	for _, r := range reqs {
		if err := os.WriteFile(filepath.Join(r.ShareDir, r.ID), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	req := podDirs(t, "pod1")
	vm, err := c.GetVM(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ID() != "pod1" || vm.Grown() || vm.Restored() {
		t.Errorf("handed out %s grown=%v restored=%v", vm.ID(), vm.Grown(), vm.Restored())
	}
	// The pooled share is now the pod's: what the guest sees is what the pod mounts there.
	pooledName := vm.(*CachedVM).Pooled
	if _, err := os.Stat(filepath.Join(req.ShareDir, pooledName)); err != nil {
		t.Errorf("share not moved to the request's: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.cfg.Dir, pooledName, "share")); !os.IsNotExist(err) {
		t.Errorf("pooled share still there: %v", err)
	}
	waitFull(t, c)
	if n := base.count(); n != 3 {
		t.Errorf("base asked for %d VMs after one hand-out, want 3", n)
	}

	// Close kills what waits in the pool, not what was handed out.
	handed := vm.(*CachedVM).Unwrap().(*fakeVM)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	base.mu.Lock()
	vms := append([]*fakeVM(nil), base.vms...)
	base.mu.Unlock()
	for _, v := range vms {
		if v == handed {
			if v.killed() {
				t.Error("Close killed a handed-out VM")
			}
			continue
		}
		if !v.killed() {
			t.Errorf("pooled VM %s survived Close", v.id)
		}
	}
	if entries, _ := os.ReadDir(c.cfg.Dir); len(entries) != 1 {
		t.Errorf("pool directory after Close holds %d entries, want only the handed-out VM's", len(entries))
	}
	if _, err := c.GetVM(context.Background(), podDirs(t, "late")); !errors.Is(err, ErrClosed) {
		t.Errorf("GetVM after Close: %v", err)
	}
	// The handed-out VM's directory goes once it exits; its logs move to the pod's.
	os.WriteFile(filepath.Join(c.cfg.Dir, handed.id, "console.log"), []byte("bye"), 0o644)
	handed.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(req.Dir, "console.log")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("console log not moved to the pod's VM directory")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pollStatus waits until the pool's status is want, within 10 s.
func pollStatus(t *testing.T, c *Cache, want CacheStatus) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Status() != want {
		if time.Now().After(deadline) {
			t.Fatalf("pool status %+v, want %+v", c.Status(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A pool warms its VMs one at a time, and counts as full only once they are warm; a
// request that finds no warm VM takes a cold one whose warm-up has not started rather
// than wait for the one under way, and a warm VM goes out before any cold one.
func TestCacheWarmsInTurnAndHandsOutColdWhenDrained(t *testing.T) {
	base := &fakeFactory{name: KindTemplate, warmable: true}
	c := newTestCache(t, base, CacheConfig{Size: 2, WarmAtOnce: 1})
	pollStatus(t, c, CacheStatus{Size: 2, Ready: 0, Cold: 2})
	// The two refills run at once: the one that joined first warms first.
	first, second := base.warmableVM(0), base.warmableVM(1)
	select {
	case <-first.started:
	case <-second.started:
		first, second = second, first
	}
	if second.warming() {
		t.Fatal("two warm-ups at once with WarmAtOnce 1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := c.WaitFull(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFull with no VM warm yet: %v, want a timeout", err)
	}

	// Drained: the cold VM whose warm-up has not started goes out, the warming one stays.
	vm, err := c.GetVM(context.Background(), podDirs(t, "pod1"))
	if err != nil {
		t.Fatal(err)
	}
	if got := vm.(*CachedVM).Unwrap(); got != second {
		t.Fatalf("handed out %s, want the cold VM %s (the other is warming)", got.ID(), second.id)
	}
	// Its refill joins cold and waits for its turn to warm.
	pollStatus(t, c, CacheStatus{Size: 2, Ready: 0, Cold: 2})
	third := base.warmableVM(2)
	if third.warming() {
		t.Fatal("the refill's warm-up started beside the one under way")
	}
	close(first.release)
	<-third.started
	pollStatus(t, c, CacheStatus{Size: 2, Ready: 1, Cold: 1})
	// The pool ran dry (a VM went out cold): it warms light to catch up.
	if got := third.warmups(); len(got) != 1 || !got[0] {
		t.Errorf("warm-ups of the refill after a cold hand-out (light?): %v, want [true]", got)
	}
	// A warm VM goes out before the cold one.
	vm, err = c.GetVM(context.Background(), podDirs(t, "pod2"))
	if err != nil {
		t.Fatal(err)
	}
	if got := vm.(*CachedVM).Unwrap(); got != first {
		t.Fatalf("handed out %s, want the warm VM %s", got.ID(), first.id)
	}
	base.releaseAll()
	waitFull(t, c)
	// Once every pooled VM was warm, the light one was finished with a full warm-up.
	if got := third.warmups(); len(got) != 2 || !got[0] || got[1] {
		t.Errorf("warm-ups of the light-warmed VM: %v, want [true false]", got)
	}
	if got := first.warmups(); len(got) != 1 || got[0] {
		t.Errorf("warm-ups of a VM warmed before the pool ran dry: %v, want [false]", got)
	}
}

// getVMInBackground asks c for a VM for pod in a goroutine; the channel gets what it answered.
func getVMInBackground(t *testing.T, c *Cache, pod string) <-chan hypervisor.VM {
	got := make(chan hypervisor.VM, 1)
	go func() {
		vm, err := c.GetVM(context.Background(), podDirs(t, pod))
		if err != nil {
			t.Error(err)
		}
		got <- vm
	}()
	return got
}

// A request that finds only a VM whose warm-up is under way waits for it: it comes sooner
// than a VM booted outside the pool.
func TestCacheWaitsForTheWarmupUnderWay(t *testing.T) {
	base := &fakeFactory{name: KindTemplate, warmable: true}
	c := newTestCache(t, base, CacheConfig{Size: 1})
	pollStatus(t, c, CacheStatus{Size: 1, Ready: 0, Cold: 1})
	only := base.warmableVM(0)
	<-only.started
	got := getVMInBackground(t, c, "pod1")
	select {
	case vm := <-got:
		t.Fatalf("handed out %v while its warm-up ran", vm)
	case <-time.After(100 * time.Millisecond):
	}
	close(only.release)
	if vm := <-got; vm == nil || vm.(*CachedVM).Unwrap() != only {
		t.Fatalf("got %v, want the warmed VM", vm)
	}
	base.releaseAll()
	waitFull(t, c)
	if n := base.count(); n != 2 {
		t.Errorf("base asked for %d VMs, want 2 (the first and its refill)", n)
	}
}

// A request that waits for a refill gets the refilled VM as it joins, before its warm-up:
// the warm-up does not start while a request waits.
func TestCacheWaitingRequestGetsTheRefillCold(t *testing.T) {
	base := &fakeFactory{name: KindTemplate, warmable: true, boots: make(chan struct{}, 1)}
	base.boots <- struct{}{}
	base.releaseAll()
	c := newTestCache(t, base, CacheConfig{Size: 1})
	waitFull(t, c)
	if _, err := c.GetVM(context.Background(), podDirs(t, "pod1")); err != nil {
		t.Fatal(err)
	}
	got := getVMInBackground(t, c, "pod2")
	// pod2 waits for the refill, which boots only now.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		waiting := c.waiters
		c.mu.Unlock()
		if waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pod2 is not waiting for the refill")
		}
		time.Sleep(time.Millisecond)
	}
	base.boots <- struct{}{}
	vm := <-got
	if vm == nil {
		t.Fatal("no VM for pod2")
	}
	if w := vm.(*CachedVM).Unwrap().(warmableVM).warmups(); len(w) != 0 {
		t.Errorf("the VM pod2 waited for was warmed %d times first (light: %v), want handed out at once", len(w), w)
	}
	close(base.boots) // the next refills boot at once
	waitFull(t, c)
}

// warmedPoolOfOne is a pool of one warmable VM, warm; every warm-up ends at once.
func warmedPoolOfOne(t *testing.T) (*fakeFactory, *Cache) {
	t.Helper()
	base := &fakeFactory{name: KindTemplate, warmable: true}
	base.releaseAll()
	c := newTestCache(t, base, CacheConfig{Size: 1})
	waitFull(t, c)
	return base, c
}

// A drained pool stays drained (its warm-ups light) until it is full again: a refill
// under way is a VM still to warm, not a calm pool.
func TestCacheStaysDrainedWhileRefilling(t *testing.T) {
	_, c := warmedPoolOfOne(t)
	c.mu.Lock()
	p := c.ready[0]
	p.warmth, c.drained, c.booting = lightWarm, true, 1 // a light VM, and a refill under way
	c.startWarmupsLocked()
	finishing, drained := p.warming, c.drained
	c.booting = 0
	c.startWarmupsLocked() // now full: the light VM is finished
	finished := p.warming || p.warmth == fullWarm
	c.mu.Unlock()
	if finishing || !drained {
		t.Errorf("with a refill under way: light VM finishing %v, pool drained %v; want false, true", finishing, drained)
	}
	if !finished {
		t.Error("full pool: the light VM's full warm-up did not start")
	}
	waitFull(t, c)
}

// A drained pool starts a warm-up only when it keeps up with the hand-outs: while VMs go
// out faster than a refill and a warm-up take together it leaves its cold VMs to the next
// pods, and it warms them once the hand-outs pause for as long as a warm-up takes, or come
// further apart.
func TestCacheDrainedPoolWarmsWhenHandOutsLeaveRoom(t *testing.T) {
	base, c := warmedPoolOfOne(t)
	vm := base.warmableVM(0)
	t0 := time.Now()
	for _, tc := range []struct {
		name            string
		interval, pause time.Duration // between hand-outs (average); since the last one
		warm            bool
	}{
		{"hand-outs faster than a warm-up", 300 * time.Millisecond, 100 * time.Millisecond, false},
		{"hand-outs slower than a warm-up, faster than it and a refill", 1200 * time.Millisecond, 100 * time.Millisecond, false},
		{"paused for a warm-up's time", 300 * time.Millisecond, time.Second, true},
		{"hand-outs slower than a refill and a warm-up", 2 * time.Second, 100 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(vm.warmups())
			c.mu.Lock()
			p := c.ready[0]
			p.warmth, c.drained = cold, true
			c.warmTook, c.refillTook, c.takeInterval, c.lastTake = time.Second, 500*time.Millisecond, tc.interval, t0
			c.now = func() time.Time { return t0.Add(tc.pause) }
			c.startWarmupsLocked()
			warming, timer := p.warming, c.resumeWarm != nil
			if c.resumeWarm != nil {
				c.resumeWarm.Stop()
				c.resumeWarm = nil
			}
			c.mu.Unlock()
			if warming != tc.warm {
				t.Errorf("warm-up started: %v, want %v", warming, tc.warm)
			}
			if timer == tc.warm {
				t.Errorf("timer to resume the warm-ups armed: %v, want %v", timer, !tc.warm)
			}
			if !tc.warm { // left cold: as it was, for the next case
				c.mu.Lock()
				p.warmth, c.drained = fullWarm, false
				c.mu.Unlock()
				return
			}
			waitFull(t, c) // light, then finished once the pool is full and warm
			if got := vm.warmups(); len(got) <= before || !got[before] {
				t.Errorf("warm-ups %v after %d before: want a light one next (the pool is drained)", got, before)
			}
		})
	}
}

// A drained pool whose hand-outs stopped resumes its warm-ups by itself once the pause is as
// long as a warm-up: no other event of the pool is needed.
func TestCacheDrainedPoolResumesWarmingAfterAPause(t *testing.T) {
	base, c := warmedPoolOfOne(t)
	c.mu.Lock()
	p := c.ready[0]
	p.warmth, c.drained = cold, true
	c.warmTook, c.refillTook, c.takeInterval, c.lastTake = 50*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond, time.Now()
	c.startWarmupsLocked()
	started := p.warming
	c.mu.Unlock()
	if started {
		t.Fatal("warm-up started right after a hand-out, with hand-outs faster than warm-ups")
	}
	waitFull(t, c) // the timer's warm-up makes the pool full and warm again
	if got := base.warmableVM(0).warmups(); len(got) < 2 || !got[1] {
		t.Errorf("warm-ups %v: want the pool's first, then a light one after the pause", got)
	}
}

func TestCacheSizeClasses(t *testing.T) {
	base := &fakeFactory{name: KindDirect, growable: true}
	fallback := &fakeFactory{name: "fallback"}
	c := newTestCache(t, base, CacheConfig{Size: 1, CPUs: 1, MemoryMiB: 128, MaxCPUs: 4, MaxMemoryMiB: 1024, Fallback: fallback})
	waitFull(t, c)

	// Smaller than the pooled VMs: a pooled one.
	small := podDirs(t, "small")
	small.MemoryMiB = 64
	vm, err := c.GetVM(context.Background(), small)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Grown() || fallback.count() != 0 {
		t.Errorf("small request: grown=%v fallback=%d", vm.Grown(), fallback.count())
	}

	// Bigger but within the hot-plug limits: a pooled one, grown.
	waitFull(t, c)
	big := podDirs(t, "big")
	big.CPUs, big.MemoryMiB = 2, 512
	vm, err = c.GetVM(context.Background(), big)
	if err != nil {
		t.Fatal(err)
	}
	g := vm.(*CachedVM).Unwrap().(growableVM)
	if !vm.Grown() || g.cpus != 2 || g.mem != 512 || fallback.count() != 0 {
		t.Errorf("big request: grown=%v to %d vCPUs %d MiB, fallback=%d", vm.Grown(), g.cpus, g.mem, fallback.count())
	}

	// Beyond the limits, or with kernel parameters: the fallback.
	huge := podDirs(t, "huge")
	huge.CPUs = 8
	params := podDirs(t, "params")
	params.KernelParams = []string{"x=1"}
	for _, req := range []Request{huge, params} {
		if _, err := c.GetVM(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	if fallback.count() != 2 {
		t.Errorf("fallback served %d requests, want 2", fallback.count())
	}
}

func TestCacheNotGrowableGoesToFallback(t *testing.T) {
	base := &fakeFactory{name: KindDirect} // its VMs do not implement Hotplugger
	fallback := &fakeFactory{name: "fallback"}
	c := newTestCache(t, base, CacheConfig{Size: 1, CPUs: 1, MemoryMiB: 128, MaxCPUs: 4, MaxMemoryMiB: 1024, Fallback: fallback})
	waitFull(t, c)
	req := podDirs(t, "big")
	req.CPUs = 2
	vm, err := c.GetVM(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if fallback.count() != 1 || vm.Grown() {
		t.Errorf("fallback=%d grown=%v", fallback.count(), vm.Grown())
	}
	// The VM that could not grow was killed, and the pool refills.
	if !base.vm(0).killed() {
		t.Error("half-grown pooled VM not killed")
	}
	waitFull(t, c)
}

func TestCacheReplacesDeadPooledVM(t *testing.T) {
	base := &fakeFactory{name: KindDirect}
	c := newTestCache(t, base, CacheConfig{Size: 1})
	waitFull(t, c)
	base.vm(0).Kill()
	deadline := time.Now().Add(5 * time.Second)
	for base.count() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("dead pooled VM not replaced")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitFull(t, c)
	vm, err := c.GetVM(context.Background(), podDirs(t, "p"))
	if err != nil {
		t.Fatal(err)
	}
	if vm.(*CachedVM).Unwrap() != base.vm(1) {
		t.Error("handed out the dead VM")
	}
}

func TestCacheFailingBase(t *testing.T) {
	boom := errors.New("boom")
	base := &fakeFactory{name: KindDirect, fail: boom}
	fallback := &fakeFactory{name: "fallback"}
	c := newTestCache(t, base, CacheConfig{Size: 1, Fallback: fallback})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitFull(ctx); !errors.Is(err, boom) {
		t.Fatalf("WaitFull: %v, want the refill error", err)
	}
	if st := c.Status(); st.Ready != 0 || st.LastErr == "" {
		t.Errorf("status %+v", st)
	}
	// With nothing coming, a request does not wait for the pool.
	if _, err := c.GetVM(ctx, podDirs(t, "p")); err != nil {
		t.Fatal(err)
	}
	if fallback.count() != 1 {
		t.Errorf("fallback served %d", fallback.count())
	}
	// Once the base works again the pool fills (after its backoff).
	base.setFail(nil)
	waitCtx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	for c.Status().Ready == 0 {
		select {
		case <-waitCtx.Done():
			t.Fatal("pool did not recover")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestCacheShareMoveFailureKeepsVM(t *testing.T) {
	base := &fakeFactory{name: KindDirect}
	fallback := &fakeFactory{name: "fallback"}
	c := newTestCache(t, base, CacheConfig{Size: 1, Fallback: fallback})
	waitFull(t, c)
	req := podDirs(t, "p")
	// A share that is not empty cannot be replaced: the pooled VM stays in the pool.
	if err := os.WriteFile(filepath.Join(req.ShareDir, "busy"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetVM(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if fallback.count() != 1 || base.vm(0).killed() || c.Status().Ready < 1 {
		t.Errorf("fallback=%d killed=%v status=%+v", fallback.count(), base.vm(0).killed(), c.Status())
	}
}

func TestCacheConfigErrors(t *testing.T) {
	base := &fakeFactory{}
	for _, cfg := range []CacheConfig{
		{Size: 0, Dir: "/x", CPUs: 1, MemoryMiB: 128},
		{Size: 1, CPUs: 1, MemoryMiB: 128},
		{Size: 1, Dir: "/x"},
		{Size: 1, Dir: "/x", CPUs: 2, MemoryMiB: 128, MaxCPUs: 1},
	} {
		if _, err := NewCache(context.Background(), base, cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if _, err := NewCache(context.Background(), nil, CacheConfig{Size: 1, Dir: "/x", CPUs: 1, MemoryMiB: 1}); err == nil {
		t.Error("nil base accepted")
	}
}
