package qemu

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// consoleFD is the descriptor under which QEMU inherits the write end of the console pipe
// (-add-fd fd=3,set=3, opened as /dev/fdset/3).
const consoleFD = 3

// maxConsoleLog bounds console.log: the guest's boot messages, the agent's log and a panic
// fit many times over, and a guest that writes to its serial port without end costs the
// host this much disk and no more.
const maxConsoleLog = 4 << 20

// consoleTruncated ends a console.log that reached maxConsoleLog.
const consoleTruncated = "\n[runv: the guest wrote more than 4 MiB to its console; the rest was dropped]\n"

// console is the pipe between QEMU's serial port and console.log.
type console struct {
	w    *os.File // QEMU's end
	r    *os.File
	file *os.File
}

// newConsole creates console.log at path and the pipe QEMU writes the console into.
func newConsole(path string) (*console, error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create console log: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("console pipe: %w", err)
	}
	return &console{w: w, r: r, file: file}, nil
}

// started drops our copy of QEMU's end and drains the console until QEMU (every holder of
// the write end) is gone. The drain never stops reading: a full log must not stall the
// guest's serial port.
func (c *console) started() {
	c.w.Close()
	go func() {
		defer c.r.Close()
		defer c.file.Close()
		drainConsole(c.file, c.r, maxConsoleLog)
	}()
}

// drainConsole copies r to w until r ends, at most limit bytes of it, then the truncation
// note; what comes after is read and dropped. A write error (a full disk) stops the copy,
// not the reading.
func drainConsole(w io.Writer, r io.Reader, limit int64) {
	_, err := io.Copy(w, io.LimitReader(r, limit))
	if err == nil {
		// The limit was reached, or r ended: a read of one more byte says which.
		var b [1]byte
		if n, rerr := r.Read(b[:]); n == 0 && errors.Is(rerr, io.EOF) {
			return
		}
		io.WriteString(w, consoleTruncated)
	}
	io.Copy(io.Discard, r)
}
