package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// guestInit runs nettool as the init of a bare guest (bench/network.sh's floor: the same
// kernel, no agent, no runv): it mounts what the kernel interfaces need, gives the first
// Ethernet interface the address the kernel command line names and serves. Parameters:
//
//	nettool.addr=IP/LEN      the interface's address (required)
//	nettool.sockbuf=BYTES    socket buffers of the server's connections
//	nettool.tcpbuf=RMAX,WMAX the most TCP's autotuning may give a socket's receive and send
//	                         buffers (net.ipv4.tcp_rmem/tcp_wmem; the kernel sizes them by
//	                         the guest's memory: 0.75 MiB at 128 MiB)
//	nettool.cgroup=1         serve from a child cgroup (v2) with the memory controller on,
//	                         as a container's process in a runv guest is
//
// Its console says "NETTOOL-SERVING" once it listens, with the interface's queue counts.
func guestInit() error {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	params := map[string]string{}
	for _, f := range strings.Fields(string(cmdline)) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.HasPrefix(k, "nettool.") {
			params[strings.TrimPrefix(k, "nettool.")] = v
		}
	}
	addr, err := netlink.ParseAddr(params["addr"])
	if err != nil {
		return fmt.Errorf("kernel parameter nettool.addr=%q: %w", params["addr"], err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var eth netlink.Link
	for _, l := range links {
		if len(l.Attrs().HardwareAddr) == 6 {
			eth = l
			break
		}
	}
	if eth == nil {
		return fmt.Errorf("no Ethernet interface")
	}
	name := eth.Attrs().Name
	if err := netlink.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("%s: add %s: %w", name, addr, err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s: up: %w", name, err)
	}
	sockbuf := 0
	if v, ok := params["sockbuf"]; ok {
		if sockbuf, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("nettool.sockbuf=%q: %w", v, err)
		}
		// The guest is nettool's alone: let SO_RCVBUF/SO_SNDBUF go as high as asked.
		for _, f := range []string{"rmem_max", "wmem_max"} {
			os.WriteFile("/proc/sys/net/core/"+f, []byte(v), 0)
		}
	}
	if v, ok := params["tcpbuf"]; ok {
		rmax, wmax, _ := strings.Cut(v, ",")
		for f, val := range map[string]string{"tcp_rmem": "4096 131072 " + rmax, "tcp_wmem": "4096 16384 " + wmax} {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+f, []byte(val), 0); err != nil {
				return fmt.Errorf("nettool.tcpbuf=%s: %s: %w", v, f, err)
			}
		}
	}
	if params["cgroup"] == "1" {
		if err := enterMemoryCgroup(); err != nil {
			return fmt.Errorf("nettool.cgroup=1: %w", err)
		}
	}
	l, err := listenTCP(":5001", sockbuf)
	if err != nil {
		return err
	}
	rx, _ := filepath.Glob("/sys/class/net/" + name + "/queues/rx-*")
	tx, _ := filepath.Glob("/sys/class/net/" + name + "/queues/tx-*")
	fmt.Printf("NETTOOL-SERVING %s %s rx-queues=%d tx-queues=%d cpus=%d\n", name, addr, len(rx), len(tx), numCPU())
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go handle(c)
	}
}

func numCPU() int {
	b, _ := os.ReadFile("/sys/devices/system/cpu/online")
	// "0" or "0-1"
	s := strings.TrimSpace(string(b))
	if _, hi, ok := strings.Cut(s, "-"); ok {
		n, _ := strconv.Atoi(hi)
		return n + 1
	}
	return 1
}

// enterMemoryCgroup mounts cgroup2, turns on the memory controller for children and moves
// this process into a child.
func enterMemoryCgroup() error {
	const root = "/sys/fs/cgroup"
	if err := unix.Mount("cgroup2", root, "cgroup2", 0, ""); err != nil {
		return fmt.Errorf("mount cgroup2: %w", err)
	}
	if err := os.WriteFile(root+"/cgroup.subtree_control", []byte("+memory"), 0); err != nil {
		return fmt.Errorf("enable the memory controller: %w", err)
	}
	if err := os.Mkdir(root+"/nettool", 0o755); err != nil {
		return err
	}
	return os.WriteFile(root+"/nettool/cgroup.procs", []byte(strconv.Itoa(os.Getpid())), 0)
}
