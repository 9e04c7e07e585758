package supervisor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/network"
)

// networkDir is the pod's network state directory (network.Attach), under the pod directory.
const networkDir = "network"

// settleTime is how long the pod's namespace must be quiet after a change before the guest
// follows it: a client configures an interface in several steps (move it in, rename,
// address, up, routes), and the guest should get the result, not each step.
const settleTime = 200 * time.Millisecond

// ConnectNetwork puts the pod's VM on the network namespace at nsPath: each of its
// interfaces is mirrored onto a NIC of the VM and configured in the guest, and interfaces
// that come or go later are followed. Call it once the client configured the namespace
// (after the prestart and createRuntime hooks) and before the pod's first process starts.
// A namespace with loopback only makes a loopback-only pod.
func (s *Supervisor) ConnectNetwork(ctx context.Context, nsPath string) error {
	if err := s.waitReady(ctx); err != nil {
		return err
	}
	s.netMu.Lock()
	defer s.netMu.Unlock()
	if s.net != nil {
		return fmt.Errorf("pod %s is already connected to a network namespace: %w", s.cfg.PodID, errdefs.ErrAlreadyExists)
	}
	var nics []hypervisor.NIC
	if d, ok := s.vm.(hypervisor.NetworkDevices); ok {
		nics = d.NICs()
	}
	// A VM that can hot-plug NICs (q35) takes interfaces beyond the ones it booted with.
	plugger, _ := s.vm.(network.NICPlugger)
	start := time.Now()
	pod, n, err := network.Attach(ctx, filepath.Join(s.cfg.Dir, networkDir), nsPath, nics, plugger)
	if err != nil {
		return fmt.Errorf("pod %s: network namespace %s: %w", s.cfg.PodID, nsPath, err)
	}
	attached := time.Since(start)
	if len(n.Interfaces) > 0 {
		if err := s.agent.Call(ctx, agentproto.MsgSetupNetwork, n, nil); err != nil {
			pod.Close()
			return fmt.Errorf("pod %s: configure the network in the guest: %w", s.cfg.PodID, err)
		}
	}
	// A loopback-only namespace (docker's --network none, a foreground run's fresh
	// namespace) is not sent: the guest has it already, lo up (the agent's boot) and every
	// NIC down without an address (as booted, or as the warm-up left it), which is what a
	// SETUPNETWORK without interfaces would make, besides renaming the NICs runvnicN: 20 ms
	// of guest time in a pooled VM, 40-50 in a direct boot or a clone. Routes and
	// neighbours only come with an interface. Interfaces that come later are sent then
	// (resyncNetwork).
	logging.G(ctx).Debug("network: mirrored, and configured in the guest", "attach", attached, "guest", time.Since(start)-attached, "interfaces", len(n.Interfaces))
	s.net, s.netSent = pod, n
	s.fwd = s.forwardPorts(ctx, pod)
	logging.G(ctx).Info("network connected", "netns", nsPath, "interfaces", len(n.Interfaces), "duration", time.Since(start))
	go s.followNetwork(logging.With(context.WithoutCancel(ctx), "pod", s.cfg.PodID), nsPath)
	return nil
}

// portDialer is the agent client's side of port forwarding.
type portDialer interface {
	DialPort(ctx context.Context, port uint16) (network.GuestConn, error)
}

// forwardPorts makes 127.0.0.1:PORT of the pod's namespace reach the VM's loopback, for
// every port: containerd's CRI serves `kubectl port-forward` by dialling there. Without it
// the pod runs, and port-forward to it fails, as it says in the log.
func (s *Supervisor) forwardPorts(ctx context.Context, pod *network.Pod) *network.PortForwarder {
	d, ok := s.agent.(portDialer)
	if !ok {
		return nil
	}
	log := logging.G(ctx).With("pod", s.cfg.PodID)
	f, err := pod.ForwardLoopback(d.DialPort, agentproto.MaxPortForwards, log)
	if err != nil {
		log.Warn("port forwarding to the pod is not available", "error", err)
		return nil
	}
	return f
}

// followNetwork keeps the guest in line with the pod's namespace while the pod runs
// (docker network connect/disconnect, a second CNI attachment). It needs free NICs for new
// interfaces; what cannot be followed is logged.
func (s *Supervisor) followNetwork(ctx context.Context, nsPath string) {
	log := logging.G(ctx)
	ns, err := netns.GetFromPath(filepath.Join(s.cfg.Dir, networkDir, "netns"))
	if err != nil {
		log.Warn("cannot watch the network namespace: interfaces added later will not reach the guest", "netns", nsPath, "error", err)
		return
	}
	defer ns.Close()
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	done := make(chan struct{})
	defer close(done)
	links, addrs, routes := make(chan netlink.LinkUpdate), make(chan netlink.AddrUpdate), make(chan netlink.RouteUpdate)
	errCB := func(err error) { log.Debug("network watch", "error", err) }
	err = errors.Join(
		netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: errCB}),
		netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: errCB}),
		netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: errCB}),
	)
	if err != nil {
		log.Warn("cannot watch the network namespace: interfaces added later will not reach the guest", "netns", nsPath, "error", err)
		return
	}
	// What changed between ConnectNetwork's snapshot and these subscriptions sent no
	// event here: one resync covers it (and sends nothing if nothing changed).
	notify()
	var settle <-chan time.Time
	for {
		select {
		case <-links:
			notify()
		case <-addrs:
			notify()
		case <-routes:
			notify()
		case <-changed:
			settle = time.After(settleTime)
		case <-settle:
			settle = nil
			if err := s.resyncNetwork(ctx); err != nil {
				log.Warn("network change not followed in the guest", "netns", nsPath, "error", err)
			}
		case <-s.closing:
			return
		case <-s.vm.Done():
			return
		}
	}
}

// resyncNetwork mirrors what changed in the namespace and sends the guest the new
// configuration if it differs from what it has.
func (s *Supervisor) resyncNetwork(ctx context.Context) error {
	s.netMu.Lock()
	defer s.netMu.Unlock()
	if s.net == nil {
		return nil
	}
	// Unplugging a NIC waits for the guest to release it (seconds under TCG), plugging one
	// for the agent to find it.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	n, err := s.net.Sync(cctx)
	if err != nil {
		return err
	}
	if reflect.DeepEqual(n, s.netSent) {
		return nil
	}
	if err := s.agent.Call(cctx, agentproto.MsgSetupNetwork, n, nil); err != nil {
		return fmt.Errorf("configure the network in the guest: %w", err)
	}
	s.netSent = n
	logging.G(ctx).Info("network change followed", "interfaces", len(n.Interfaces), "duration", time.Since(start))
	return nil
}

// closeNetwork removes what runv added to the pod's namespace.
func (s *Supervisor) closeNetwork() error {
	s.netMu.Lock()
	defer s.netMu.Unlock()
	if s.net == nil {
		return nil
	}
	var errs []error
	if s.fwd != nil {
		errs = append(errs, s.fwd.Close())
		s.fwd = nil
	}
	errs = append(errs, s.net.Close())
	s.net = nil
	return errors.Join(errs...)
}

// CleanupPodDir removes what a pod left in its directory, for a pod whose daemon is gone
// (killed, or a create that failed): runv's taps, filters and qdiscs in the pod's network
// namespace, the share's mounts, and the directory itself.
func CleanupPodDir(podDir string) error {
	return errors.Join(
		network.Release(filepath.Join(podDir, networkDir)),
		mounts.UnmountUnder(podDir),
		mounts.RemoveUnmounted(podDir),
	)
}
