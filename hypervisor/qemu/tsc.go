package qemu

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
)

// hostTSCkHz is the host's TSC frequency in kHz, read once from /proc/cpuinfo. Under TCG
// the guest's TSC runs at the host's rate. On a host with tsc_known_freq, "cpu MHz" is
// the TSC frequency.
var hostTSCkHz = sync.OnceValues(func() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCPUMHz(f)
})

// parseCPUMHz returns the first "cpu MHz" of a /proc/cpuinfo, in kHz.
func parseCPUMHz(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("/proc/cpuinfo: bad cpu MHz %q", strings.TrimSpace(val))
		}
		return int(math.Round(mhz * 1000)), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/cpuinfo has no \"cpu MHz\" line")
}
