package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// Report records of the helper.
const (
	reportPid   = 'P'
	reportError = 'E'
	// reportReady: create mode's init is set up and waits for its start.
	reportReady = 'R'
	// reportTrace: a step of create mode's init, its text the step (traceSteps).
	reportTrace = 'T'
	maxReport   = 512
)

// helperReport is one record the helper wrote.
type helperReport struct {
	kind  uint32
	value int32
	text  string
}

// readReport reads one record; io.EOF when the helper (and the process it forked) closed
// the report pipe without another one.
func readReport(r io.Reader) (helperReport, error) {
	var h [12]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return helperReport{}, io.EOF
		}
		return helperReport{}, fmt.Errorf("read the exec helper's report: %w", err)
	}
	rep := helperReport{kind: binary.LittleEndian.Uint32(h[0:]), value: int32(binary.LittleEndian.Uint32(h[4:]))}
	n := binary.LittleEndian.Uint32(h[8:])
	if n > maxReport || (rep.kind != reportPid && rep.kind != reportError && rep.kind != reportReady && rep.kind != reportTrace) {
		return helperReport{}, fmt.Errorf("malformed report from the exec helper (kind %#x, %d bytes)", rep.kind, n)
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(r, text); err != nil {
		return helperReport{}, fmt.Errorf("read the exec helper's report: %w", err)
	}
	rep.text = string(text)
	return rep, nil
}

// helperError turns the helper's failure report into an error. A program that cannot be
// found or run gets the words of libcontainer's (Go's exec.LookPath and execve), so that
// classifyStartError (startProcess) gives the same KindNotExecutable error, exit code and
// message as with libcontainer.
func helperError(rep helperReport, argv0 string) error {
	errno := syscall.Errno(rep.value)
	switch rep.text {
	case "lookpath: not in PATH":
		return lookPathError(argv0, "executable file not found in $PATH")
	case "lookpath":
		// Go's findExecutable: stat's error as a path error, its own checks bare.
		if errno == syscall.EACCES || errno == syscall.EISDIR {
			return lookPathError(argv0, errno.Error())
		}
		return lookPathError(argv0, "stat "+argv0+": "+errno.Error())
	case "execve":
		return lookPathError(argv0, errno.Error())
	}
	return fmt.Errorf("exec helper: %s: %w", rep.text, errno)
}

// lookPathError is a not-executable error in libcontainer's words.
func lookPathError(argv0, reason string) error {
	return fmt.Errorf("exec: %q: %s", argv0, reason)
}
