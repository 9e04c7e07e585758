package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// podResolvConf is the pod's resolv.conf in the guest, bound into containers that bring
// none of their own.
const podResolvConf = "/run/runv/resolv.conf"

// shareMountOptions are the 9p options of the pod share. The host writes into the share
// (bind mounts of volumes) behind the guest's back, so names, attributes and read()/write()
// are not cached. cache=mmap differs from cache=none only for memory-mapped files: their
// pages are read ahead (up to msize per request instead of a 9p round trip per 4 KiB fault:
// exec'ing a pod's first program, busybox's `true`, 79-82 instead of 95-101 ms from
// STARTCONTAINER to its exit in a pooled VM) and shared writable mappings work (cache=none
// refuses them, as runc's host filesystems do not); a shared mapping's dirty pages are
// written back when it is unmapped, at the latest when its process exits.
//
// msize is the virtio transport's maximum, PAGE_SIZE*(VIRTQUEUE_NUM-3) = 512000 on Linux
// 6.1: asked for more, the 9p client cuts it down and says so with a printk, which cost
// every mount (a template clone's above all, whose kernel translates the printk and console
// code again) ~300 translation blocks.
const shareMountOptions = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"

// destroyGrace bounds how long DESTROYPOD waits for killed processes to be reported.
const destroyGrace = 10 * time.Second

// podState is what STARTPOD set up.
type podState struct {
	id         string
	resolvConf string // podResolvConf when the pod has DNS settings, else ""
	shareTag   string
	// namespaces are the pod's namespaces, pinned from its first container
	// (pinPodNamespaces), by type; nil until that container exists.
	namespaces map[specs.LinuxNamespaceType]string
}

// startPod applies what a pod (and every clone of a VM template) needs once: identity,
// clock, entropy and the share. Clones inherit a stale clock and their template's RNG
// state, which is why the time and entropy come from the host here.
func (a *Agent) startPod(_ context.Context, req *Request) (any, error) {
	tr := a.trace.begin("STARTPOD")
	defer a.trace.end(tr, a.log)
	p, err := req.Frame.UnmarshalPod()
	if err != nil {
		return nil, withKind(agentproto.KindInvalid, err)
	}
	tr.mark("decoded")
	if p.ID == "" {
		return nil, errorf(agentproto.KindInvalid, "STARTPOD without a pod id")
	}
	a.mu.Lock()
	if a.pod != nil {
		id := a.pod.id
		a.mu.Unlock()
		return nil, errorf(agentproto.KindState, "pod %q is already started", id)
	}
	// Reserve: a concurrent second STARTPOD fails instead of mounting twice.
	a.pod = &podState{id: p.ID}
	a.mu.Unlock()

	st, err := a.applyPod(p, tr)
	if err != nil {
		a.mu.Lock()
		a.pod = nil
		a.mu.Unlock()
		return nil, err
	}
	a.mu.Lock()
	a.pod = st
	a.mu.Unlock()
	a.log.setPod(p.ID)
	if err := req.Ack(nil); err != nil {
		a.log.Errorf("ACK STARTPOD: %v", err)
	}
	// Success is the host's to log (the pod daemon's "pod ready"): a console line costs the
	// guest's only vCPU ~0.5 ms under TCG, and a template clone's first one ~3 ms more, its
	// tty and UART code translated anew (docs/performance.md, "Template clones: the share
	// kept mounted, success off the console, stop 22").
	a.log.Debugf("pod started (share %s at %s)", st.shareTag, agentproto.SharePath)
	return nil, nil
}

func (a *Agent) applyPod(p agentproto.Pod, tr *stepTrace) (*podState, error) {
	st := &podState{id: p.ID, shareTag: p.ShareTag}
	if st.shareTag == "" {
		st.shareTag = agentproto.ShareTag
	}
	if p.TimeUnixNano != 0 {
		tv := unix.NsecToTimeval(p.TimeUnixNano)
		if err := unix.Settimeofday(&tv); err != nil {
			return nil, fmt.Errorf("set the clock: %w", err)
		}
	}
	tr.mark("clock set")
	if len(p.Entropy) > 0 {
		if err := addEntropy(p.Entropy); err != nil {
			return nil, err
		}
	}
	tr.mark("entropy added")
	// Checking lo again would cost a template clone 5-25 ms of socket code that it runs
	// for the first time (under TCG, QEMU translates it again in every clone).
	if !a.loopbackReady {
		if err := loopbackUp(); err != nil {
			return nil, err
		}
		tr.mark("loopback up")
	}
	if p.Hostname != "" {
		if err := unix.Sethostname([]byte(p.Hostname)); err != nil {
			return nil, withKind(agentproto.KindInvalid, fmt.Errorf("set hostname %q: %w", p.Hostname, err))
		}
	}
	if len(p.DNS) > 0 || len(p.DNSSearch) > 0 || len(p.DNSOptions) > 0 {
		if err := writeResolvConf(podResolvConf, p); err != nil {
			return nil, err
		}
		st.resolvConf = podResolvConf
	}
	tr.mark("hostname, resolv.conf")
	if err := a.mountShare(st.shareTag); err != nil {
		return nil, err
	}
	tr.mark("9p share mounted")
	return st, nil
}

// mountShareAhead mounts the share for WARMUP, before any pod: a pooled VM's, and a
// template's when its QEMU carries the mount over into clones (factory's parkAgent).
func (a *Agent) mountShareAhead(tag string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pod != nil {
		return errorf(agentproto.KindState, "WARMUP: the pod is starting: the share is STARTPOD's")
	}
	if a.shareMounted == tag {
		return nil
	}
	if err := a.mountShareLocked(tag); err != nil {
		return err
	}
	a.log.Infof("share %s mounted ahead of the pod", tag)
	return nil
}

// mountShare mounts the pod's share at SharePath for STARTPOD, unless WARMUP mounted the
// same share already.
func (a *Agent) mountShare(tag string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mountShareLocked(tag)
}

func (a *Agent) mountShareLocked(tag string) error {
	switch a.shareMounted {
	case tag:
		return nil
	case "":
	default:
		if err := unix.Unmount(agentproto.SharePath, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount the share %q mounted ahead on %s: %w", a.shareMounted, agentproto.SharePath, err)
		}
		a.shareMounted = ""
	}
	if err := os.MkdirAll(agentproto.SharePath, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", agentproto.SharePath, err)
	}
	if err := unix.Mount(tag, agentproto.SharePath, "9p", 0, shareMountOptions); err != nil {
		return fmt.Errorf("mount 9p share %q on %s: %w", tag, agentproto.SharePath, err)
	}
	a.shareMounted = tag
	// The share's root is 0711 (the host sets it before QEMU starts): a container in a user
	// namespace, whose mapped root prepares its rootfs, can traverse it.
	return nil
}

// addEntropy mixes b into the kernel RNG and credits it (RNDADDENTROPY), then forces the
// CRNG to reseed so that clones of one template diverge at once.
func addEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("add entropy: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b)+3)
	binary.NativeEndian.PutUint32(info[0:4], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:8], uint32(len(b)))
	copy(info[8:], b)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return fmt.Errorf("add entropy: RNDADDENTROPY: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 && errno != unix.EINVAL {
		return fmt.Errorf("add entropy: RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

func writeResolvConf(path string, p agentproto.Pod) error {
	var b strings.Builder
	for _, ns := range p.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(p.DNSSearch) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(p.DNSSearch, " "))
	}
	if len(p.DNSOptions) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(p.DNSOptions, " "))
	}
	if err := os.MkdirAll("/run/runv", 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// destroyPod kills every process, destroys the containers, unmounts the share, syncs,
// acknowledges and powers the VM off.
func (a *Agent) destroyPod(ctx context.Context, req *Request) (any, error) {
	a.mu.Lock()
	a.destroying = true
	var ctrs []*container
	for _, c := range a.containers {
		ctrs = append(ctrs, c)
	}
	pod := a.pod
	shareMounted := a.shareMounted != ""
	a.mu.Unlock()
	a.log.Infof("destroying the pod (%d containers)", len(ctrs))

	for _, c := range ctrs {
		if err := c.killAll(); err != nil {
			c.log.Debugf("kill: %v", err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, destroyGrace)
	defer cancel()
	for _, c := range ctrs {
		for _, p := range c.processList() {
			select {
			case <-p.reported:
			case <-wctx.Done():
				p.log.Errorf("still running %s after SIGKILL; destroying anyway", destroyGrace)
			}
		}
		if err := c.lc.Destroy(); err != nil {
			c.log.Errorf("destroy: %v", err)
		}
		c.releaseExecState()
	}
	if pod != nil || shareMounted {
		if err := unix.Unmount(agentproto.SharePath, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			a.log.Errorf("unmount %s: %v (detaching)", agentproto.SharePath, err)
			_ = unix.Unmount(agentproto.SharePath, unix.MNT_DETACH)
		}
	}
	unix.Sync()
	if err := req.Ack(nil); err != nil {
		a.log.Errorf("ACK DESTROYPOD: %v", err)
	}
	powerOff(a.log, "pod destroyed")
	return nil, nil
}
