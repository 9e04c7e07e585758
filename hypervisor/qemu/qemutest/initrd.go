package qemutest

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/runv-project/runv/api/agentproto"
)

// Busybox is the static busybox the test initrd is made of.
const Busybox = "/bin/busybox"

// The test init's vocabulary on the control port, one line each way:
//
//	ping X    -> pong ping X   (any other line is echoed the same way)
//	share     -> share <files> (mounts the 9p share and lists it)
//	mounted   -> mounted <files> (lists the share mounted before: a template's, in a clone)
//	write F   -> wrote F       (creates file F in the share mounted before)
//	poweroff  -> powers the guest off at once
//	sleep     -> slept         (after a 1 s sleep of the guest: a wait on its timer)
//
// Booted with runv.probe=1 it prints RUNV-PROBE-OK on the console and powers off, like
// the agent's probe mode.
const initScript = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
con=/dev/ttyS0
if grep -q 'runv.probe=1' /proc/cmdline; then
  echo RUNV-PROBE-OK > $con
  poweroff -f
fi
port() { for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name)" = "$1" ] && echo /dev/${d##*/}; done; }
ctl=$(port %[1]s)
stream=$(port %[2]s)
echo "TEST-INIT ctl=$ctl stream=$stream" > $con
exec 3<>$ctl
while :; do
  if read -r line <&3; then
    case "$line" in
      poweroff) poweroff -f ;;
      sleep) sleep 1; echo slept >&3 ;;
      mounted) echo "mounted" $(ls /mnt) >&3 ;;
      write\ *) if echo guest > "/mnt/${line#write }"; then echo "wrote ${line#write }" >&3; else echo "write failed" >&3; fi ;;
      share) if mount -t 9p -o trans=virtio,version=9p2000.L %[3]s /mnt; then echo "share" $(ls /mnt) >&3; else echo "share failed" >&3; fi ;;
      *) echo "pong $line" >&3 ;;
    esac
  else
    # The host is not connected: read() on a virtio-serial port returns 0 at once.
    sleep 0.05
  fi
done
`

// Initrd writes the test initrd (gzip'd newc cpio of busybox and the init above) into a
// temporary directory and returns its path.
func Initrd(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(Busybox); err != nil {
		t.Skip("static busybox not found at " + Busybox + ": apt-get install busybox-static")
	}
	path := filepath.Join(t.TempDir(), "initrd.gz")
	if err := WriteInitrd(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteInitrd writes the test initrd to path.
func WriteInitrd(path string) error {
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		return err
	}
	script := fmt.Sprintf(initScript, agentproto.ControlPortName, agentproto.StreamPortName, agentproto.ShareTag)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	zw := gzip.NewWriter(bw)
	w := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt"} {
		w.entry(d, 0o040755, 0, 0, nil)
	}
	w.entry("dev/console", 0o020600, 5, 1, nil)
	w.entry("bin/busybox", 0o100755, 0, 0, bb)
	w.entry("init", 0o100755, 0, 0, []byte(script))
	w.entry("TRAILER!!!", 0, 0, 0, nil)
	if w.err != nil {
		return w.err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// cpioWriter writes the "newc" cpio format the kernel unpacks as an initramfs.
type cpioWriter struct {
	w   interface{ Write([]byte) (int, error) }
	ino int
	n   int
	err error
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	_, c.err = c.w.Write(b)
	c.n += len(b)
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) entry(name string, mode, rmajor, rminor int, data []byte) {
	c.ino++
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}
