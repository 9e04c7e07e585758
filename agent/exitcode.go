package agent

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/runv-project/runv/api/agentproto"
)

// Exit codes of the shell convention for a process that never ran.
const (
	exitNotFound      = 127 // command not found
	exitNotExecutable = 126 // found, but cannot be executed
	exitUnknown       = 255 // exit status lost
)

// exitStatus converts a wait status to the wire form: the exit status, or 128+signal.
func exitStatus(ws syscall.WaitStatus) (code, signal int) {
	switch {
	case ws.Exited():
		return ws.ExitStatus(), 0
	case ws.Signaled():
		return 128 + int(ws.Signal()), int(ws.Signal())
	}
	return exitUnknown, 0
}

// processExit builds the PROCESSEXIT event from what a procHandle's wait returned: the wait
// status, or the error that lost it.
func processExit(ctr, proc string, ws syscall.WaitStatus, waitErr error) agentproto.ProcessExit {
	if waitErr != nil {
		e := agentproto.ProcessExit{Container: ctr, Process: proc}
		e.ExitCode = exitUnknown
		e.Error = fmt.Sprintf("exit status lost: %v", waitErr)
		return e
	}
	return exitOf(ctr, proc, ws)
}

// exitOf is the PROCESSEXIT event of a wait status.
func exitOf(ctr, proc string, ws syscall.WaitStatus) agentproto.ProcessExit {
	e := agentproto.ProcessExit{Container: ctr, Process: proc}
	e.ExitCode, e.Signal = exitStatus(ws)
	return e
}

// lookPathErr matches the error text of Go's exec.LookPath, which libcontainer's init runs
// on the process's argv[0] inside the container before it reports "ready": the failure
// arrives as text through libcontainer's sync pipe (no error value survives), e.g.
//
//	unable to start container process: error during container init:
//	exec: "nosuch": executable file not found in $PATH
//
// Compiled on first use: every boot would otherwise pay it in the agent's package init
// (9 ms under TCG, GODEBUG=inittrace=1), for an error path.
var lookPathErr = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`exec: ("(?:[^"\\]|\\.)*"): ([^;]*)`)
})

// classifyStartError recognises a process that could not be started because its executable
// is missing (exit code 127) or not executable (126), and rewrites the error into the
// KindNotExecutable ERROR the host turns into that exit code:
//
//	exec: "<argv0>": executable file not found      (127: no such file, not in $PATH)
//	exec: "<argv0>": permission denied              (126: not executable, a directory, noexec)
//
// Choice (see the package doc): a process whose executable cannot be found never existed,
// so NEWCONTAINER/EXECCMD fail with an ERROR, as `runc create`/`runc exec` fail, rather
// than succeed and report a PROCESSEXIT; the host maps the kind and message to 127/126.
// ok is false for every other start failure.
func classifyStartError(err error) (code int, classified error, ok bool) {
	if err == nil {
		return 0, nil, false
	}
	m := lookPathErr().FindStringSubmatch(err.Error())
	if m == nil {
		return 0, nil, false
	}
	name, reason := m[1], strings.TrimSpace(m[2])
	if n, uerr := strconv.Unquote(name); uerr == nil {
		name = n
	}
	switch {
	case strings.Contains(reason, "executable file not found"),
		strings.Contains(reason, "no such file or directory"),
		strings.Contains(reason, "not a directory"):
		return exitNotFound, errorf(agentproto.KindNotExecutable, "exec: %q: executable file not found (%s)", name, reason), true
	case strings.Contains(reason, "permission denied"),
		strings.Contains(reason, "is a directory"),
		strings.Contains(reason, "exec format error"):
		return exitNotExecutable, errorf(agentproto.KindNotExecutable, "exec: %q: permission denied (%s)", name, reason), true
	}
	return 0, nil, false
}
