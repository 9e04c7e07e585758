// Package fdpass hands file descriptors from the CLI to the pod daemon over a unix socket
// with SCM_RIGHTS. The daemon then writes a container's output to the very descriptors
// `runv create` was given (files, pipes, FIFOs, a pty), as runc does, instead of reopening
// paths that may not exist in its view or may not be reopenable at all (anonymous pipes).
//
// A client sends one message: a JSON header naming a token and the descriptors as rights.
// The daemon acknowledges with one line and parks the descriptors under the token until a
// gRPC call claims them (Take) or they expire.
package fdpass

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/sockets"
)

// MaxFiles caps the descriptors in one message (stdin, stdout, stderr, and a pidfd of the
// process's host stand-in).
const MaxFiles = 4

// MaxPending caps the descriptor sets parked at once. Every CLI call that creates or execs
// parks one set and claims it a moment later, so even a burst of concurrent execs parks a
// few dozen; the cap keeps a client that sends without claiming from filling the daemon's
// descriptor table (until its sets expire after unclaimedTTL).
const MaxPending = 256

// unclaimedTTL bounds how long descriptors wait for the call that claims them.
const unclaimedTTL = 2 * time.Minute

// fullAnswer starts the server's answer when it holds MaxPending sets already.
const fullAnswer = "full: "

type header struct {
	Token string `json:"token"`
	Count int    `json:"count"`
}

// Send passes files to the daemon listening on sock under token.
func Send(sock, token string, files []*os.File) error {
	if len(files) == 0 || len(files) > MaxFiles {
		return fmt.Errorf("pass %d descriptors: between 1 and %d allowed: %w", len(files), MaxFiles, errdefs.ErrInvalidArgument)
	}
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("connect to pod daemon stdio socket %s: %w: %w", sock, err, errdefs.ErrUnavailable)
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	hdr, _ := json.Marshal(header{Token: token, Count: len(files)})
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	if _, _, err := uc.WriteMsgUnix(hdr, unix.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("send stdio descriptors to pod daemon: %w", err)
	}
	uc.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 256)
	n, err := uc.Read(ack)
	if err != nil {
		return fmt.Errorf("pod daemon did not acknowledge stdio descriptors: %w", err)
	}
	switch answer := strings.TrimSuffix(string(ack[:n]), "\n"); {
	case answer == "ok":
	case strings.HasPrefix(answer, fullAnswer):
		return fmt.Errorf("pod daemon (%s) refused stdio descriptors: %s: %w", sock, strings.TrimPrefix(answer, fullAnswer), errdefs.ErrUnavailable)
	default:
		return fmt.Errorf("pod daemon (%s) refused stdio descriptors: %s", sock, answer)
	}
	return nil
}

// Server receives descriptors for the daemon.
type Server struct {
	ln      *net.UnixListener
	mu      sync.Mutex
	pending map[string]parked
	done    chan struct{}
}

type parked struct {
	files []*os.File
	timer *time.Timer
}

// Listen serves on sock.
func Listen(sock string) (*Server, error) {
	ln, err := sockets.Listen(sock)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, pending: map[string]parked{}, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *Server) serve() {
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		go s.receive(conn)
	}
}

func (s *Server) receive(conn *net.UnixConn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(MaxFiles*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	files, ferr := parseRights(oob[:oobn])
	reject := func(msg string) {
		for _, f := range files {
			f.Close()
		}
		conn.Write([]byte(msg + "\n"))
	}
	if ferr != nil {
		reject(ferr.Error())
		return
	}
	if flags&unix.MSG_CTRUNC != 0 {
		reject(fmt.Sprintf("more than %d descriptors", MaxFiles))
		return
	}
	var h header
	if err := json.Unmarshal(buf[:n], &h); err != nil || h.Token == "" || h.Count != len(files) {
		reject("malformed header")
		return
	}
	s.mu.Lock()
	if _, dup := s.pending[h.Token]; dup {
		s.mu.Unlock()
		reject("duplicate token")
		return
	}
	if len(s.pending) >= MaxPending {
		s.mu.Unlock()
		reject(fmt.Sprintf("%sit holds %d unclaimed descriptor sets, the most it keeps: claim them (a create or exec call) or retry after they expire (%s)",
			fullAnswer, MaxPending, unclaimedTTL))
		return
	}
	token := h.Token
	s.pending[token] = parked{files: files, timer: time.AfterFunc(unclaimedTTL, func() { s.expire(token) })}
	s.mu.Unlock()
	conn.Write([]byte("ok\n"))
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("bad control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("passed-fd-%d", fd)))
		}
	}
	if len(files) > MaxFiles {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("more than %d descriptors", MaxFiles)
	}
	return files, nil
}

func (s *Server) expire(token string) {
	s.mu.Lock()
	p, ok := s.pending[token]
	delete(s.pending, token)
	s.mu.Unlock()
	if ok {
		for _, f := range p.files {
			f.Close()
		}
	}
}

// Take claims the descriptors sent under token.
func (s *Server) Take(token string) ([]*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pending[token]
	if !ok {
		return nil, fmt.Errorf("no stdio descriptors were passed under token %q: %w", token, errdefs.ErrInvalidArgument)
	}
	p.timer.Stop()
	delete(s.pending, token)
	return p.files, nil
}

// Close stops serving and closes every unclaimed descriptor.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for t, p := range s.pending {
		p.timer.Stop()
		for _, f := range p.files {
			f.Close()
		}
		delete(s.pending, t)
	}
	s.mu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
