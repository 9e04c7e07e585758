package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/runv-project/runv/internal/sockets"
)

// A template's device state reaches its file through a unix socket runv listens on: QEMU
// migrates to "unix:<vm dir>/migrate.sock" and runv copies what arrives into the state
// file. QEMU 7.2 writes a migration to a path only through "exec:" (a shell, which
// -sandbox spawn=deny forbids) and to a descriptor only when one is passed over QMP; a
// socket in the VM's directory needs neither, so no QEMU ever spawns.

// migrateSocket is the socket in the VM directory the template migrates to.
const migrateSocket = "migrate.sock"

// maxDeviceState bounds a template's device state. With x-ignore-shared the stream holds
// the devices only (about 100 KB measured); a stream of RAM (the capability lost) or a
// QEMU that writes without end must not fill the templates' tmpfs.
const maxDeviceState = 16 << 20

// stateReceiver accepts one migration on its socket and copies it into a new state file.
type stateReceiver struct {
	ln    *net.UnixListener
	sock  string
	state string
	done  chan error // the copy's result, once
	stop  chan struct{}
}

// receiveState listens on sock and copies the first connection into state (created, never
// overwritten), at most limit bytes.
func receiveState(sock, state string, limit int64) (*stateReceiver, error) {
	os.Remove(sock) // left by a launcher that was killed
	ln, err := sockets.Listen(sock)
	if err != nil {
		return nil, fmt.Errorf("device state socket: %w", err)
	}
	f, err := os.OpenFile(state, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		ln.Close()
		os.Remove(sock)
		return nil, fmt.Errorf("create state file: %w", err)
	}
	r := &stateReceiver{ln: ln, sock: sock, state: state, done: make(chan error, 1), stop: make(chan struct{})}
	go func() { r.done <- r.copy(f, limit) }()
	return r, nil
}

func (r *stateReceiver) copy(f *os.File, limit int64) error {
	defer f.Close()
	conn, err := r.ln.AcceptUnix()
	r.ln.Close() // one migration, one connection
	if err != nil {
		return fmt.Errorf("accept the migration on %s: %w", r.sock, err)
	}
	defer conn.Close()
	go func() {
		<-r.stop
		conn.SetReadDeadline(time.Now()) // unblocks the copy
	}()
	n, err := io.Copy(f, io.LimitReader(conn, limit+1))
	if err != nil {
		return fmt.Errorf("receive device state into %s: %w", r.state, err)
	}
	if n > limit {
		return fmt.Errorf("device state is larger than %d MiB: stopped writing %s (was x-ignore-shared lost, so that RAM is migrated?)", limit>>20, r.state)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", r.state, err)
	}
	return f.Close()
}

// wait returns once the migration's stream ended (QEMU closes it when the migration
// completed) and was written, or fails when ctx ends first.
func (r *stateReceiver) wait(ctx context.Context) error {
	select {
	case err := <-r.done:
		r.done <- err // for close
		return err
	case <-ctx.Done():
		return fmt.Errorf("device state stream did not end: %w", ctx.Err())
	}
}

// close stops the copy if it still runs and removes the socket; with failed, the state
// file too. It returns once the copy has stopped.
func (r *stateReceiver) close(failed bool) {
	close(r.stop)
	r.ln.Close() // unblocks an accept
	<-r.done
	os.Remove(r.sock)
	if failed {
		os.Remove(r.state)
	}
}

// migrateSocketIn is the template's migration socket in VM directory dir.
func migrateSocketIn(dir string) string { return filepath.Join(dir, migrateSocket) }
