// Package qemu implements hypervisor.Launcher with qemu-system-x86_64.
//
// A launch is a list of named steps (validate, resolve-accel, build-args, start-process,
// connect-qmp, query-status), each timed at debug level; the first failure names its step and
// tears down everything started before it. The command line is plain data built from the
// Config (args.go), so it is unit-tested without booting anything.
//
// Templates (template.go, hypervisor.Templater) reuse the same steps and command line: a
// template boots with its RAM in a shared memory-backend-file, and adds park-guest, stop,
// save-state (x-ignore-shared migration of the device state to a file) and quit; a clone
// maps that file privately, boots no kernel, starts with -incoming defer, connects its
// channels, writes its migration commands with the QMP handshake (connect-qmp) and adds
// wait-incoming (on QMP's events) and cont. Template and clone command lines differ only in
// share=on/off, the kernel options, -incoming and the translations' property
// (translations.go): the device state only loads into an identical device set.
//
// QEMU is started from a goroutine locked to its OS thread that lives as long as QEMU does:
// Pdeathsig fires when the *thread* that forked the child exits, so this keeps "QEMU dies
// with us" true even though the Go runtime retires threads at will. QEMU gets its own
// process group, so that helpers it spawns die with it when we kill the group.
//
// Everything a VM creates lives in Config.Dir:
//
//	qmp.sock     QMP monitor (monitor.go)
//	ctl.sock     chardev of the control port (agentproto.ControlPortName)
//	stream.sock  chardev of the stream port (agentproto.StreamPortName)
//	qemu.pid     QEMU's pid, for tools and post-mortems
//	console.log  guest serial console
//	qemu.log     QEMU's stderr; its tail is quoted in launch errors
//
// The sockets and the pid file are removed when QEMU exits (by the launcher, which knows the
// paths: QEMU only has the descriptors); the logs stay for diagnosis.
//
// The three sockets are made by runv, listening, before QEMU starts, and QEMU inherits them
// (vmsockets.go): a connection made before QEMU runs waits in the socket's queue, so runv
// never polls for the sockets to appear.
package qemu
