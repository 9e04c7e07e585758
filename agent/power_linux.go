package agent

import (
	"time"

	"golang.org/x/sys/unix"
)

// powerOff ends the VM: PID 1 must never exit (the kernel would panic), so every fatal path
// and DESTROYPOD end here. It never returns.
func powerOff(log *logger, why string) {
	log.Infof("powering off: %s", why)
	drainConsole()
	unix.Sync()
	for {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		// Only reachable if the kernel refused; nothing better to do than to say so and
		// retry now and then rather than exit.
		log.Errorf("reboot(POWER_OFF): %v", err)
		time.Sleep(time.Second)
	}
}

// drainConsole waits until the serial console has transmitted what was written to it. A
// write to a tty returns once the bytes are in the tty's buffer; powering off at once can
// lose the last lines (and the probe's marker) before the UART sent them to the host.
func drainConsole() {
	fd, err := unix.Open("/dev/console", unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	unix.IoctlSetInt(fd, unix.TCSBRK, 1) // tcdrain
}

// fatal logs a fatal error and powers off.
func fatal(log *logger, format string, args ...any) {
	log.Errorf("FATAL: "+format, args...)
	powerOff(log, "fatal error")
}
