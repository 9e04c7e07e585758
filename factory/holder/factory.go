package holder

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/internal/wire"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// Args is what a holder process is started with.
type Args struct {
	ID, Dir, ShareDir string
	CPUs, MemoryMiB   int
	// Parent is the factory daemon's pid (the holder watches it while its VM is pooled).
	Parent int
	// ReadyFD is the descriptor on which the holder reports "ok <VMInfo JSON>" or "error: ...".
	ReadyFD int
}

// Factory boots every VM in a holder process of its own (see the package doc): the
// base factory of the factory daemon's pools. Command builds the holder's command line;
// the holder boots with the pool's base kind (direct or template).
type Factory struct {
	Command func(Args) *exec.Cmd
	// Kind is the base kind the holders boot with, for status output.
	Kind string
}

var _ factory.Factory = (*Factory)(nil)

// Name is the base kind.
func (f *Factory) Name() string { return f.Kind }

// Close does nothing: holders are killed through their VMs.
func (f *Factory) Close() error { return nil }

// GetVM starts a holder for req and returns once its VM's agent is parked.
func (f *Factory) GetVM(ctx context.Context, req factory.Request) (hypervisor.VM, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("holder %s: %w", req.ID, err)
	}
	defer r.Close()
	logPath := filepath.Join(req.Dir, Log)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("holder %s: %w", req.ID, err)
	}
	defer logf.Close()
	null, err := devNull()
	if err != nil {
		w.Close()
		return nil, err
	}
	defer null.Close()
	cmd := f.Command(Args{ID: req.ID, Dir: req.Dir, ShareDir: req.ShareDir, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB,
		Parent: os.Getpid(), ReadyFD: 3})
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.Dir = "/"
	p, err := startChild(cmd)
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("holder %s: start: %w", req.ID, err)
	}
	go p.closeFD()
	// The holder's own start (runv-holder or runv) and QEMU's launch are a refill's too, and a
	// refill starts while a pod starts: niced at once, as its QEMU will be (pooledNice).
	// Its own process group (startChild): every thread it has, and later ones inherit.
	if err := unix.Setpriority(unix.PRIO_PGRP, p.pid, pooledNice); err != nil {
		logging.G(ctx).Warn("cannot lower the holder's priority", "holder", req.ID, "error", err)
	}

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	var l string
	select {
	case l = <-line:
	case <-ctx.Done():
		p.kill()
		<-p.done
		return nil, fmt.Errorf("holder %s: %w", req.ID, ctx.Err())
	}
	if rest, ok := strings.CutPrefix(l, "ok "); ok {
		var info wire.VMInfo
		if err := json.Unmarshal([]byte(rest), &info); err != nil {
			p.kill()
			return nil, fmt.Errorf("holder %s: bad report %q: %w", req.ID, l, err)
		}
		return newVM(req.ID, info, p), nil
	}
	// It failed (and says why) or died without a word: it is on its way out either way.
	select {
	case <-p.done:
	case <-time.After(holderExitWait):
		p.kill()
		<-p.done
	}
	if l == "" {
		l = "exited without a word; see " + logPath
	}
	return nil, fmt.Errorf("holder %s: %s: %w", req.ID, strings.TrimPrefix(l, "error: "), errdefs.ErrUnavailable)
}
