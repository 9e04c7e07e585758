package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
)

// netfloor boots the bare floor of bench/network.sh: runv's own QEMU command line for a VM
// of that size (hypervisor/qemu.CommandLine), with bench/nettool as the initrd's init
// instead of the agent, one NIC whose tap QEMU creates in the host's namespace (no pod
// namespace, no tc redirect, no runv), given the host side of -addr. It prints "ready"
// once nettool serves in the guest, and runs until SIGTERM/SIGINT or QEMU's exit.
func netfloor(args []string) error {
	fs := flag.NewFlagSet("netfloor", flag.ExitOnError)
	kernel := fs.String("kernel", "/var/lib/runv/vmlinux", "guest kernel")
	initrd := fs.String("initrd", "", "initrd whose /init is bench/nettool (go run ./initrd -agent nettool)")
	machine := fs.String("machine", hypervisor.MachineMicroVM, "machine type")
	cpus := fs.Int("cpus", 1, "vCPUs")
	memory := fs.Int("memory", 128, "MiB")
	queues := fs.Int("queues", -1, "queue pairs of the NIC (-1: as runv gives a VM of -cpus)")
	tap := fs.String("tap", "", "name of the tap QEMU creates in the host's namespace")
	addr := fs.String("addr", "", "the guest's address, IP/LEN; the tap gets the first address of the subnet")
	guestParams := fs.String("guest-params", "", "more kernel parameters (nettool.gro=off ...)")
	tcg := fs.String("tcg", "", "TCG options, as -accel tcg,OPTS (thread=multi,tb-size=MiB)")
	nicProps := fs.String("nic-props", "", "more properties of the virtio-net device (guest_tso4=off,...)")
	noPorts := fs.Bool("no-nic-ports", false, "leave out q35's spare root ports for hot-plugged NICs (to measure what they cost)")
	mac := fs.String("mac", "", "the NIC's MAC (default: runv's slot 0 MAC)")
	tapAddr := fs.Bool("tap-addr", true, "give the tap the host's address (false: only set it up, for a tc redirect to an interface that has it)")
	fs.Parse(args)
	if *initrd == "" || *tap == "" || *addr == "" {
		return errors.New("netfloor: -initrd, -tap and -addr are required")
	}
	guest, err := netlink.ParseAddr(*addr)
	if err != nil {
		return fmt.Errorf("netfloor: -addr %q: %w", *addr, err)
	}
	host := *guest.IPNet
	host.IP = append(host.IP.Mask(host.Mask).To4(), 0)[:4]
	host.IP[3]++

	dir, err := os.MkdirTemp("", "rvfloor")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	l := &qemu.Launcher{}
	// Started as runv starts its QEMU: without transparent huge pages (the error is runv's
	// to ignore too).
	_ = qemu.DisableHugePages()
	bin, qargs, err := l.CommandLine(context.Background(), hypervisor.Config{
		ID: "floor", Dir: dir, ShareDir: dir, Kernel: *kernel, Initrd: *initrd,
		Machine: *machine, Accel: hypervisor.AccelTCG, CPUs: *cpus, MemoryMiB: *memory,
		KernelParams: append([]string{"nettool.addr=" + *addr}, strings.Fields(*guestParams)...),
	}, true)
	if err != nil {
		return err
	}
	if *noPorts {
		qargs = withoutNICs(qargs, false)
	}
	if qargs, err = floorArgs(qargs, *tap, *queues, *tcg, *nicProps+macProp(*mac)); err != nil {
		return err
	}
	fmt.Println("qemu command line:", bin, strings.Join(qargs, " "))
	cmd := exec.Command(bin, qargs...)
	cmd.Stderr = os.Stderr
	// QEMU dies with benchtool: a floor VM must never outlive the benchmark.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	console, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cmd.Process.Kill()
		<-exited
		return nil
	}
	hostAddr := &host
	if !*tapAddr {
		hostAddr = nil
	}
	if err := configureTap(*tap, hostAddr, exited); err != nil {
		stop()
		return err
	}
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(console)
		for sc.Scan() {
			line := sc.Text()
			fmt.Println("guest:", line)
			if strings.HasPrefix(line, "NETTOOL-SERVING") {
				serving <- line
			}
		}
		io.Copy(io.Discard, console)
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case <-serving:
			fmt.Println("ready")
		case <-sigs:
			return stop()
		case err := <-exited:
			return fmt.Errorf("netfloor: qemu exited: %v", err)
		case <-time.After(10 * time.Minute):
			stop()
			return errors.New("netfloor: still running after 10 minutes: stopped")
		}
	}
}

// configureTap waits (up to a minute) for QEMU to create the tap, then gives it the host's
// address (unless nil) and sets it up.
func configureTap(name string, host *net.IPNet, exited <-chan error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		l, err := netlink.LinkByName(name)
		if err == nil {
			if host != nil {
				if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: host}); err != nil {
					return fmt.Errorf("netfloor: tap %s: add %s: %w", name, host, err)
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("netfloor: tap %s: up: %w", name, err)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netfloor: QEMU did not create tap %s within a minute: %w", name, err)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("netfloor: qemu exited before creating tap %s: %v", name, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// macProp is the device property that sets the NIC's MAC (replacing runv's, floorArgs).
func macProp(mac string) string {
	if mac == "" {
		return ""
	}
	return ",mac=" + mac
}

var (
	macRE    = regexp.MustCompile(`,mac=[^,]*`)
	ifnameRE = regexp.MustCompile(`ifname=[^,]*`)
	queuesRE = regexp.MustCompile(`,queues=\d+|,mq=on|,vectors=\d+`)
)

// floorArgs turns runv's command line into the floor's: the first NIC's tap becomes tap
// (in whatever namespace QEMU runs: the host's), the others go, queues overrides the
// NIC's queue pairs when not -1, nicProps are added to its device, and tcg, if set, moves
// the accelerator to -accel tcg,tcg.
func floorArgs(args []string, tap string, queues int, tcg, nicProps string) ([]string, error) {
	var out []string
	nic := 0
	for i := 0; i < len(args); i++ {
		a := args[i]
		if i+1 < len(args) && (a == "-netdev" || a == "-device" && strings.HasPrefix(args[i+1], "virtio-net")) {
			v := args[i+1]
			i++
			if nic >= 2 {
				continue
			}
			nic++ // the first NIC's -netdev and its -device are kept
			if a == "-netdev" {
				v = ifnameRE.ReplaceAllString(v, "ifname="+tap)
			}
			if queues >= 0 {
				v = queuesRE.ReplaceAllString(v, "")
				if queues > 1 {
					if a == "-netdev" {
						v += ",queues=" + strconv.Itoa(queues)
					} else {
						v += ",mq=on"
						if strings.HasPrefix(v, "virtio-net-pci") {
							v += ",vectors=" + strconv.Itoa(2*queues+2)
						}
					}
				}
			}
			if a == "-device" && nicProps != "" {
				if strings.Contains(nicProps, "mac=") {
					v = macRE.ReplaceAllString(v, "")
				}
				v += "," + strings.TrimPrefix(nicProps, ",")
			}
			out = append(out, a, v)
			continue
		}
		if a == "-machine" && tcg != "" && i+1 < len(args) {
			out = append(out, a, strings.Replace(args[i+1], ",accel=tcg", "", 1), "-accel", "tcg,"+tcg)
			i++
			continue
		}
		out = append(out, a)
	}
	if nic != 2 {
		return nil, fmt.Errorf("netfloor: runv's command line has no NIC to reuse")
	}
	return out, nil
}
