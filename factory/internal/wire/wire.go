// Package wire is the protocol between the factory daemon (factory/factoryd), its holder
// processes (factory/holder) and the pod daemons that take VMs from it.
//
// # Protocol
//
// One JSON request and one JSON response per unix-socket connection, both on
// <root>/@factory/factory.sock (ops get, status) and on a holder's holder.sock (ops info,
// agent, warm, adopt, grow, shutdown, kill). The factory daemon learns the pod daemon's pid
// from the socket (SO_PEERCRED), never from the message. Errors carry their errdefs class.
// An answer may carry descriptors (op agent: the agent's open channels), as SCM_RIGHTS
// with its bytes (CallFiles).
package wire

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/errdefs/errcode"
	"github.com/runv-project/runv/factory"
)

// Ops.
const (
	OpGet    = "get"
	OpStatus = "status"
	OpInfo   = "info"
	// OpAgent is op info for the VM's owner that also hands it the agent's channels as the
	// holder left them open (control, then stream), if it still has them.
	OpAgent    = "agent"
	OpWarm     = "warm"
	OpAdopt    = "adopt"
	OpGrow     = "grow"
	OpShutdown = "shutdown"
	OpKill     = "kill"
)

// Request is every op's message; each op uses some fields.
type Request struct {
	Op string `json:"op"`
	// get: the VM a pod needs. Dir and ShareDir are the pod's, and must be empty.
	ID        string `json:"id,omitempty"`
	Dir       string `json:"dir,omitempty"`
	ShareDir  string `json:"shareDir,omitempty"`
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memoryMiB,omitempty"`
	// adopt: the new owner (set by the factory daemon from SO_PEERCRED) and where the VM's
	// directory moves.
	Pid int `json:"pid,omitempty"`
	// get: the VM is for this child of the asking process (the pod daemon it just
	// started), which the factory daemon checks, instead of for the asking process.
	Child int `json:"child,omitempty"`
	// warm: the light warm-up (agentproto.WarmupContainer) instead of the full one.
	Light bool `json:"light,omitempty"`
	// status: wait until every pool is full (or a refill failed).
	Wait bool `json:"wait,omitempty"`
	// TimeoutMs bounds the op on the serving side (get, status wait, shutdown).
	TimeoutMs int64 `json:"timeoutMs,omitempty"`
}

// Response is every op's answer.
type Response struct {
	Error string `json:"error,omitempty"`
	// Code is the errdefs class of Error, as a gRPC code (errdefs maps them both ways).
	Code   codes.Code `json:"code,omitempty"`
	VM     *VMInfo    `json:"vm,omitempty"`
	Status *Status    `json:"status,omitempty"`
	// Warmup is op warm's answer: what the warm-up took in the guest (zero: there was
	// none to run).
	Warmup *factory.WarmResult `json:"warmup,omitempty"`
	// Files go with the answer as SCM_RIGHTS; ServeConn closes them once sent.
	Files []*os.File `json:"-"`
}

// VMInfo describes a held VM.
type VMInfo struct {
	// ID is the VM's name: the pool's name while pooled, the pod's once handed out.
	ID string `json:"id"`
	// Dir is the VM's directory (QEMU's files and holder.sock).
	Dir       string `json:"dir"`
	QEMUPid   int    `json:"qemuPid"`
	HolderPid int    `json:"holderPid"`
	Accel     string `json:"accel"`
	// Restored: a template clone (see hypervisor.VM).
	Restored bool `json:"restored,omitempty"`
	// Grown: CPUs or memory were hot-plugged for the request (see hypervisor.VM).
	Grown bool `json:"grown,omitempty"`
	// Owner is the pid of the pod daemon the VM was handed to (0 while pooled).
	Owner int `json:"owner,omitempty"`
}

// Status is the factory daemon's state.
type Status struct {
	Pid   int          `json:"pid"`
	Pools []PoolStatus `json:"pools"`
}

// PoolStatus is one pool.
type PoolStatus struct {
	Name         string `json:"name"`
	Kind         string `json:"kind"` // the base kind: direct or template
	CPUs         int    `json:"cpus"`
	MemoryMiB    int    `json:"memoryMiB"`
	MaxCPUs      int    `json:"maxCPUs,omitempty"`
	MaxMemoryMiB int    `json:"maxMemoryMiB,omitempty"`
	factory.CacheStatus
}

// ErrResponse is the answer that carries err and its errdefs class.
func ErrResponse(err error) Response {
	return Response{Error: err.Error(), Code: errcode.Of(err)}
}

// Err is the error the answer carries, with its errdefs class, or nil.
func (r Response) Err() error {
	if r.Error == "" {
		return nil
	}
	code := r.Code
	if code == codes.OK {
		// OK is no class: an error must never read as success.
		code = codes.Unknown
	}
	return errcode.Err(code, r.Error)
}

// Call sends one request to the socket at path and returns the answer (or its error).
func Call(ctx context.Context, path string, req Request) (Response, error) {
	return call(ctx, path, req, nil)
}

// maxFiles caps the descriptors an answer may carry.
const maxFiles = 4

// CallFiles is Call for an answer that may carry descriptors: they are in the answer's
// Files, the caller's to close (also when the answer is an error).
func CallFiles(ctx context.Context, path string, req Request) (Response, error) {
	var files []*os.File
	resp, err := call(ctx, path, req, &files)
	resp.Files = files
	return resp, err
}

// rightsReader reads a unix connection, keeping the descriptors that come with its bytes.
type rightsReader struct {
	conn  *net.UnixConn
	files *[]*os.File
	err   error // a control message that could not be parsed
}

func (r *rightsReader) Read(p []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(maxFiles*4))
	n, oobn, _, _, err := r.conn.ReadMsgUnix(p, oob)
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, ferr := unix.ParseUnixRights(&m)
			if ferr != nil {
				perr = errors.Join(perr, ferr)
				continue
			}
			for _, fd := range fds {
				*r.files = append(*r.files, os.NewFile(uintptr(fd), "passed"))
			}
		}
		if perr != nil && r.err == nil {
			r.err = perr
		}
	}
	return n, err
}

func call(ctx context.Context, path string, req Request, files *[]*os.File) (Response, error) {
	if dl, ok := ctx.Deadline(); ok && req.TimeoutMs == 0 {
		req.TimeoutMs = time.Until(dl).Milliseconds()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("%s: %w", req.Op, err)
	}
	defer conn.Close()
	// The connection dies with ctx: a server that hangs does not hang us.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Response{}, fmt.Errorf("%s: send: %w", req.Op, errors.Join(err, ctx.Err()))
	}
	var in io.Reader = conn
	var rights *rightsReader
	if files != nil {
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			return Response{}, fmt.Errorf("%s: %s is not a unix socket: %w", req.Op, path, errdefs.ErrInvalidArgument)
		}
		rights = &rightsReader{conn: uc, files: files}
		in = rights
	}
	var resp Response
	if err := decodeMessage(in, &resp); err != nil {
		if ctx.Err() != nil {
			return Response{}, fmt.Errorf("%s: no answer from %s: %w", req.Op, path, ctx.Err())
		}
		return Response{}, fmt.Errorf("%s: read answer from %s: %w: %w", req.Op, path, err, errdefs.ErrUnavailable)
	}
	if err := resp.Err(); err != nil {
		return resp, fmt.Errorf("%s: %w", req.Op, err)
	}
	if rights != nil && rights.err != nil {
		return resp, fmt.Errorf("%s: descriptors from %s: %w", req.Op, path, rights.err)
	}
	return resp, nil
}

// OpContext is the serving side's context for a request: its timeout, within parent.
func OpContext(parent context.Context, req Request, def time.Duration) (context.Context, context.CancelFunc) {
	d := def
	if req.TimeoutMs > 0 {
		d = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	return context.WithTimeout(parent, d)
}

// maxMessage caps a request or an answer: a peer that sends more is broken, and must not
// make the other side buffer it.
const maxMessage = 64 << 10

// requestTimeout bounds how long a client may take to send its request: a connection that
// stalls mid-request must not hold a goroutine and a descriptor forever.
const requestTimeout = 10 * time.Second

// ServeConn reads one request from conn, answers it with handle, and closes conn.
func ServeConn(conn net.Conn, handle func(net.Conn, Request) Response) {
	defer conn.Close()
	var req Request
	conn.SetReadDeadline(time.Now().Add(requestTimeout))
	if err := decodeMessage(conn, &req); err != nil {
		json.NewEncoder(conn).Encode(ErrResponse(fmt.Errorf("bad request: %v: %w", err, errdefs.ErrInvalidArgument)))
		return
	}
	conn.SetReadDeadline(time.Time{}) // handlers may watch the connection for as long as they run
	resp := handle(conn, req)
	defer func() {
		for _, f := range resp.Files {
			f.Close()
		}
	}()
	uc, ok := conn.(*net.UnixConn)
	if len(resp.Files) == 0 || !ok {
		json.NewEncoder(conn).Encode(resp)
		return
	}
	b, err := json.Marshal(resp)
	if err != nil {
		json.NewEncoder(conn).Encode(ErrResponse(fmt.Errorf("encode answer: %w", err)))
		return
	}
	fds := make([]int, len(resp.Files))
	for i, f := range resp.Files {
		fds[i] = int(f.Fd())
	}
	// The descriptors go with the answer's first bytes, in one message.
	uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(fds...), nil)
}

// decodeMessage decodes one JSON value of at most maxMessage bytes from r.
func decodeMessage(r io.Reader, v any) error {
	lr := &io.LimitedReader{R: r, N: maxMessage + 1}
	if err := json.NewDecoder(bufio.NewReader(lr)).Decode(v); err != nil {
		if lr.N <= 0 {
			return fmt.Errorf("message larger than %d bytes", maxMessage)
		}
		return err
	}
	return nil
}

// PeerPid is the pid of the process at the other end of a unix socket connection
// (SO_PEERCRED): who asks, as the kernel says, never as the message says.
func PeerPid(conn interface {
	SyscallConn() (syscall.RawConn, error)
}) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return int(cred.Pid), nil
}
