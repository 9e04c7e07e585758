package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/runc/types"
	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// eventsCommand prints runc's event lines, one JSON object per line:
//
//	{"type":"stats","id":"c1","data":{"cpu":{...},"memory":{...},"pids":{...},...}}
//
// With --stats it prints one stats event and exits. Otherwise it prints a stats event every
// --interval and, unlike runc (which has only stats and oom), the container's lifecycle
// events from its pod daemon's event log: create, start, exec, exit, pause, resume, delete,
// each with {"time", "process", "exitCode", "message"} as data. The log is replayed from the
// container's creation, so nothing that happened before the command started is missed. It
// ends, as runc's does, when the container stops (its init's exit event), or when the
// container or its pod goes away.
var eventsCommand = &cli.Command{
	Name:      "events",
	Usage:     "display container events: lifecycle, and cpu, memory and pids statistics",
	ArgsUsage: "<container-id>",
	Flags: []cli.Flag{
		&cli.DurationFlag{Name: "interval", Value: 5 * time.Second, Usage: "set the stats collection interval"},
		&cli.BoolFlag{Name: "stats", Usage: "display the container's stats then exit"},
	},
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		interval := c.Duration("interval")
		if interval <= 0 {
			return fmt.Errorf("--interval %s: duration interval must be greater than 0: %w", interval, errdefs.ErrInvalidArgument)
		}
		rec, err := loadRecord(g.store, id)
		if err != nil {
			return err
		}
		live, err := liveState(rec)
		if err != nil {
			return err
		}
		if live.Status == state.StatusStopped {
			return stateError(fmt.Sprintf("container with id %s is not running", id))
		}
		pod, err := dialLive(rec)
		if err != nil {
			return stateError(fmt.Sprintf("container with id %s is not running", id))
		}
		defer pod.Close()
		out := &eventWriter{enc: json.NewEncoder(os.Stdout)}
		if c.Bool("stats") {
			ev, err := statsEvent(c.Context, pod, id)
			if err != nil {
				return err
			}
			return out.write(ev)
		}
		return followEvents(c.Context, pod, id, interval, out)
	},
}

// eventWriter serialises event lines from the stats ticker and the lifecycle stream.
type eventWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *eventWriter) write(e *types.Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.enc.Encode(e); err != nil {
		return fmt.Errorf("write event: %w", err)
	}
	return nil
}

// lifecycleData is the data of a lifecycle event.
type lifecycleData struct {
	Time     time.Time `json:"time"`
	Process  string    `json:"process,omitempty"`
	ExitCode *int      `json:"exitCode,omitempty"`
	Message  string    `json:"message,omitempty"`
}

// statsEvent asks the pod daemon for the container's cgroup figures in the VM. The agent
// reports cpu usage, memory usage and limit, and the number of pids; the other fields of
// runc's stats stay zero.
func statsEvent(ctx context.Context, pod *podConn, id string) (*types.Event, error) {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := pod.api.Stats(sctx, &podapi.ContainerRequest{Id: id})
	if err != nil {
		err = rpcErr(err)
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			return nil, stateError(fmt.Sprintf("container with id %s is not running", id))
		}
		return nil, fmt.Errorf("stats of container %q: %w", id, err)
	}
	var s types.Stats
	s.CPU.Usage.Total = st.CpuUsageNanos
	s.Memory.Usage = types.MemoryEntry{Usage: st.MemoryUsageBytes, Limit: st.MemoryLimitBytes}
	s.Pids.Current = st.Pids
	s.Hugetlb = map[string]types.Hugetlb{}
	return &types.Event{Type: "stats", ID: id, Data: &s}, nil
}

// followEvents prints stats every interval and the lifecycle events as they happen.
func followEvents(ctx context.Context, pod *podConn, id string, interval time.Duration, out *eventWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The daemon's own creation time of the container: the replay starts there, so it
	// holds this container's events and none of an earlier one of the same name.
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	cs, err := pod.api.State(sctx, &podapi.ContainerRequest{Id: id})
	scancel()
	if err != nil {
		return fmt.Errorf("events of container %q: %w", id, rpcErr(err))
	}
	stream, err := pod.api.Events(ctx, &podapi.EventsRequest{SinceUnixNano: cs.CreatedUnixNano, Id: id})
	if err != nil {
		return fmt.Errorf("events of container %q: %w", id, rpcErr(err))
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ev, err := statsEvent(ctx, pod, id)
			if err != nil {
				if ctx.Err() == nil {
					logging.G(ctx).Warn("stats", "container", id, "error", err)
				}
				continue
			}
			if err := out.write(ev); err != nil {
				logging.G(ctx).Error("events", "error", err)
				cancel()
				return
			}
		}
	}()

	for {
		e, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			err = rpcErr(err)
			if errors.Is(err, errdefs.ErrUnavailable) {
				return nil // the pod went away: nothing more will happen to the container
			}
			return fmt.Errorf("events of container %q: %w", id, err)
		}
		data := &lifecycleData{Time: time.Unix(0, e.UnixNano).UTC(), Process: e.Process, Message: e.Message}
		if e.Type == supervisor.EventExit {
			code := int(e.ExitCode)
			data.ExitCode = &code
		}
		if err := out.write(&types.Event{Type: e.Type, ID: id, Data: data}); err != nil {
			return err
		}
		initExit := e.Type == supervisor.EventExit && (e.Process == "" || e.Process == agentproto.InitProcessID)
		if initExit || e.Type == supervisor.EventDelete {
			return nil
		}
	}
}
