package agent

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// loopbackUp brings up the VM's loopback interface. Every container of the pod runs in the
// VM's network namespace (see convert.AdjustSpec), and a container finds lo up there with runc:
// docker, podman and CNI bring it up in the network namespace they make for the pod. A
// kernel starts with lo down, so without this 127.0.0.1 is unreachable in the pod.
//
// The socket the ioctls went through is left open for the agent's life, deliberately: in a
// cold guest, closing it runs the socket's destruction and its deferred frees for the
// first time, ~230 blocks QEMU translates (~2 ms of every direct boot) to free one
// descriptor.
func loopbackUp() (err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: read its flags: %w", err)
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	return nil
}
