package network

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	ebpflink "github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Offsets in struct bpf_sk_lookup (include/uapi/linux/bpf.h), the context of an sk_lookup
// program: stable kernel ABI since 5.9.
const (
	skLookupFamily   = 8
	skLookupProtocol = 12
	skLookupRemoteIP = 16
	skLookupLocalIP  = 40
)

// skPass lets the kernel's lookup go on with what the program chose (or its own lookup).
const skPass = 1

// loopbackSteer sends every TCP connection made to 127.0.0.1, any port, inside one network
// namespace to a single listener: an sk_lookup program attached to the namespace picks
// the listener, so the accepted connection keeps the port the client dialled as its local
// address. The listener is bound to 127.0.0.1 in that namespace and is reachable from it
// only.
//
// Why sk_lookup and not an nftables redirect: the program and its link live exactly as
// long as the descriptors this process holds, so a supervisor that dies (SIGKILL included)
// leaves nothing in the namespace and no teardown has to find it later; it needs no
// conntrack, no SO_ORIGINAL_DST, and no rules a user's firewall tooling could trip over.
type loopbackSteer struct {
	ln   *net.TCPListener
	prog *ebpf.Program
	link *ebpflink.NetNsLink
}

// steerLoopback sets up the steering in the namespace ns.
func steerLoopback(ns netns.NsHandle) (_ *loopbackSteer, err error) {
	ln, err := listenIn(ns)
	if err != nil {
		return nil, err
	}
	s := &loopbackSteer{ln: ln}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	socks, err := ebpf.NewMap(&ebpf.MapSpec{Name: "runv_pf_sock", Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create the port-forward socket map: %w", err)
	}
	// The program holds the map, and the map the socket, for as long as they are needed.
	defer socks.Close()
	raw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	var uerr error
	if err := raw.Control(func(fd uintptr) { uerr = socks.Update(uint32(0), uint64(fd), ebpf.UpdateAny) }); err != nil {
		return nil, err
	}
	if uerr != nil {
		return nil, fmt.Errorf("put the port-forward listener in its socket map: %w", uerr)
	}
	s.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "runv_pf_steer",
		Type:         ebpf.SkLookup,
		AttachType:   ebpf.AttachSkLookup,
		Instructions: steerProgram(socks.FD()),
		License:      "Apache-2.0",
	})
	if err != nil {
		return nil, fmt.Errorf("load the port-forward sk_lookup program (needs a kernel with BPF sk_lookup, 5.9 or later): %w", err)
	}
	s.link, err = ebpflink.AttachNetNs(int(ns), s.prog)
	if err != nil {
		return nil, fmt.Errorf("attach the port-forward sk_lookup program to the pod's network namespace: %w", err)
	}
	return s, nil
}

// steerProgram is the sk_lookup program: a TCP/IPv4 connection from 127.0.0.0/8 to
// 127.0.0.1 goes to the socket in slot 0 of the map; anything else takes the normal
// lookup. Checking the source too keeps the rule to connections made inside the
// namespace (the kernel drops loopback addresses arriving from other interfaces anyway).
func steerProgram(sockMapFD int) asm.Instructions {
	loopback := int32(binary.NativeEndian.Uint32(net.IPv4(127, 0, 0, 1).To4()))
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skLookupFamily, asm.Word),
		asm.JNE.Imm(asm.R2, unix.AF_INET, "pass"),
		asm.LoadMem(asm.R2, asm.R6, skLookupProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, unix.IPPROTO_TCP, "pass"),
		asm.LoadMem(asm.R2, asm.R6, skLookupLocalIP, asm.Word),
		asm.JNE.Imm(asm.R2, loopback, "pass"),
		// The first byte of the source address, in network order whatever the CPU's.
		asm.LoadMem(asm.R2, asm.R6, skLookupRemoteIP, asm.Byte),
		asm.JNE.Imm(asm.R2, 127, "pass"),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, sockMapFD),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		// A failed assignment falls back to the normal lookup: nothing listens there, the
		// client gets a refusal, as it would without runv.
		asm.FnSkAssign.Call(),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.FnSkRelease.Call(),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	}
}

// listenIn opens a TCP listener on 127.0.0.1 (a port of the kernel's choice) inside ns. A
// socket belongs to the namespace it was created in, wherever it is used later.
func listenIn(ns netns.NsHandle) (*net.TCPListener, error) {
	type result struct {
		ln  *net.TCPListener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter the pod's network namespace: %w", err)}
			return
		}
		// Plain TCP: Go listens with MPTCP by default where the kernel has it, and a
		// socket map refuses MPTCP sockets (EOPNOTSUPP).
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		var ln *net.TCPListener
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		if serr := netns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with this goroutine, namespace and all.
		if err != nil {
			err = fmt.Errorf("listen on 127.0.0.1 in the pod's network namespace (is its loopback up?): %w", err)
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// Accept waits for the next steered connection; its LocalAddr holds the port the client
// dialled.
func (s *loopbackSteer) Accept() (*net.TCPConn, error) { return s.ln.AcceptTCP() }

// Close detaches the program and closes the listener. Connections already accepted stay.
func (s *loopbackSteer) Close() error {
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
	}
	errs = append(errs, s.ln.Close())
	return errors.Join(errs...)
}
