package qemu

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// NICPorts is how many empty PCIe root ports a q35 VM boots with, for NICs plugged while the
// pod runs beyond the NICSlots pre-created ones (a third interface, docker network connect
// a second time). A root port is a PCI bridge the guest enumerates at boot and QEMU keeps
// as a few hundred bytes of device state; PCIe hot-plug needs one per device.
const NICPorts = 4

// unplugTimeout bounds a NIC's removal: the guest has to release the device first, and
// Linux's PCIe hot-plug driver waits 5 s after the attention button before it powers the
// slot off (a TCG guest on a loaded host takes longer).
const unplugTimeout = 90 * time.Second

func nicPortID(i int) string      { return "nicport" + strconv.Itoa(i) }
func nicDeviceID(slot int) string { return "nic" + strconv.Itoa(slot) }
func nicNetdevID(slot int) string { return "net" + strconv.Itoa(slot) }

// nicPortArgs are the empty root ports of a q35 VM. Their chassis numbers only need to be
// unique among the VM's root ports (these are its only ones). io-reserve=0: a virtio device
// behind a PCIe port is modern-only and needs no I/O ports, and the firmware then reserves
// none of the 64 KiB I/O space for each port.
func nicPortArgs(n int) []string {
	var args []string
	for i := 0; i < n; i++ {
		args = append(args, "-device", "pcie-root-port,id="+nicPortID(i)+",bus=pcie.0,chassis="+strconv.Itoa(i+1)+",io-reserve=0")
	}
	return args
}

// PlugNIC adds a NIC to the running VM (q35 only): QEMU creates its tap in its own network
// namespace, where the pre-created NICs' taps wait, and the device goes into a free root
// port. The guest finds it by its slot's MAC once its PCI hot-plug driver has enumerated
// it (the agent waits for that).
func (v *vm) PlugNIC(ctx context.Context) (hypervisor.NIC, error) {
	if v.cfg.Machine != hypervisor.MachineQ35 {
		return hypervisor.NIC{}, fmt.Errorf("vm %s: machine %s cannot hot-plug network devices (q35 can: --machine q35): %w", v.cfg.ID, v.cfg.Machine, errdefs.ErrNotImplemented)
	}
	v.nicMu.Lock()
	defer v.nicMu.Unlock()
	if v.pluggedNICs == nil {
		v.pluggedNICs = map[int]int{}
	}
	slot := NICSlots
	for ; slot < agentproto.MaxNICs; slot++ {
		if _, used := v.pluggedNICs[slot]; !used {
			break
		}
	}
	port := -1
	taken := map[int]bool{}
	for _, p := range v.pluggedNICs {
		taken[p] = true
	}
	for i := 0; i < NICPorts; i++ {
		if !taken[i] {
			port = i
			break
		}
	}
	if port < 0 || slot >= agentproto.MaxNICs {
		return hypervisor.NIC{}, fmt.Errorf("vm %s: cannot plug another network device: its %d spare PCIe root ports are taken: %w", v.cfg.ID, NICPorts, errdefs.ErrFailedPrecondition)
	}
	netdev := map[string]any{
		"type": "tap", "id": nicNetdevID(slot), "ifname": tapName(slot),
		"script": "no", "downscript": "no", "vnet_hdr": true,
	}
	device := map[string]any{
		"driver": "virtio-net-pci", "id": nicDeviceID(slot), "netdev": nicNetdevID(slot),
		"mac": agentproto.NICSlotMAC(slot), "bus": nicPortID(port), "romfile": "",
	}
	if q := nicQueues(v.cfg.CPUs); q > 1 {
		netdev["queues"] = q
		device["mq"] = true
		device["vectors"] = 2*q + 2
	}
	if err := v.qmp(ctx, "netdev_add", netdev, nil); err != nil {
		return hypervisor.NIC{}, fmt.Errorf("vm %s: add the tap of NIC slot %d: %w", v.cfg.ID, slot, err)
	}
	if err := v.qmp(ctx, "device_add", device, nil); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quitTimeout)
		v.qmp(dctx, "netdev_del", map[string]any{"id": nicNetdevID(slot)}, nil)
		cancel()
		return hypervisor.NIC{}, fmt.Errorf("vm %s: plug NIC slot %d into %s: %w", v.cfg.ID, slot, nicPortID(port), err)
	}
	v.pluggedNICs[slot] = port
	v.log.Debug("nic plugged", "slot", slot, "port", nicPortID(port))
	return hypervisor.NIC{Slot: slot, Tap: tapName(slot), NetNS: fmt.Sprintf("/proc/%d/ns/net", v.proc.pid)}, nil
}

// UnplugNIC removes a NIC that PlugNIC added, once the guest released it, and its tap.
func (v *vm) UnplugNIC(ctx context.Context, nic hypervisor.NIC) error {
	v.nicMu.Lock()
	defer v.nicMu.Unlock()
	if _, ok := v.pluggedNICs[nic.Slot]; !ok {
		return fmt.Errorf("vm %s: NIC slot %d was not hot-plugged: %w", v.cfg.ID, nic.Slot, errdefs.ErrNotFound)
	}
	id := nicDeviceID(nic.Slot)
	if err := v.qmp(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return fmt.Errorf("vm %s: unplug NIC slot %d: %w", v.cfg.ID, nic.Slot, err)
	}
	// QEMU removes the device once the guest acknowledged the removal: until then it is
	// still among the machine's peripherals.
	err := v.poll(ctx, unplugTimeout, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		var children []struct {
			Name string `json:"name"`
		}
		if err := v.qmp(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &children); err != nil {
			return false, err
		}
		for _, c := range children {
			if c.Name == id {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("vm %s: NIC slot %d: the guest did not release the device: %w", v.cfg.ID, nic.Slot, err)
	}
	if err := v.qmp(ctx, "netdev_del", map[string]any{"id": nicNetdevID(nic.Slot)}, nil); err != nil {
		return fmt.Errorf("vm %s: remove the tap of NIC slot %d: %w", v.cfg.ID, nic.Slot, err)
	}
	delete(v.pluggedNICs, nic.Slot)
	return nil
}
