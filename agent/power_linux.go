package agent

import (
	"time"

	"golang.org/x/sys/unix"
)

// powerOff ends the VM: PID 1 must never exit (the kernel would panic), so every fatal path
// and DESTROYPOD end here. It never returns.
func powerOff(log *logger, why string) {
	log.Infof("powering off: %s", why)
	unix.Sync()
	for {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		// Only reachable if the kernel refused; nothing better to do than to say so and
		// retry now and then rather than exit.
		log.Errorf("reboot(POWER_OFF): %v", err)
		time.Sleep(time.Second)
	}
}

// fatal logs a fatal error and powers off.
func fatal(log *logger, format string, args ...any) {
	log.Errorf("FATAL: "+format, args...)
	powerOff(log, "fatal error")
}
