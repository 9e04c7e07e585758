# runv's devices only (hypervisor/qemu/args.go): microvm and q35 machines, virtio over
# mmio and PCI, virtio-serial, virtio-9p, virtio-rng, virtio-net, PCIe root ports for NIC
# hot-plug on q35.
CONFIG_Q35=y
CONFIG_MICROVM=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_SERIAL=y
CONFIG_VIRTIO_9P=y
CONFIG_VIRTIO_RNG=y
CONFIG_VIRTIO_NET=y
CONFIG_PCIE_PORT=y
