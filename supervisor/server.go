package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/errdefs/errgrpc"
	"github.com/runv-project/runv/internal/fdpass"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

// server exposes a Supervisor over gRPC, translating error classes into status codes.
type server struct {
	podapi.UnimplementedPodServer
	s *Supervisor
	// stdio holds the descriptors CLI clients park before Create and Exec name them.
	stdio *fdpass.Server
}

// Register adds the pod service for s to g; the descriptors requests name are taken from
// stdio.
func Register(g *grpc.Server, s *Supervisor, stdio *fdpass.Server) {
	podapi.RegisterPodServer(g, &server{s: s, stdio: stdio})
}

func stdioReq(s *podapi.Stdio) StdioRequest {
	if s == nil {
		return StdioRequest{}
	}
	return StdioRequest{Token: s.Token, HasStdin: s.HasStdin, HasStdout: s.HasStdout, HasStderr: s.HasStderr, HasStandIn: s.HasStandIn}
}

// watchStandIn has the supervisor watch the stand-in pidfd a request carried (nil: none)
// once its process exists.
func (g *server) watchStandIn(ctx context.Context, id, proc string, standIn *os.File) error {
	if standIn == nil {
		return nil
	}
	return g.s.WatchStandIn(ctx, id, proc, []*os.File{standIn})
}

func size(c *podapi.ConsoleSize) (uint16, uint16) {
	if c == nil {
		return 0, 0
	}
	return uint16(c.Rows), uint16(c.Cols)
}

// closeFile closes f if it is set.
func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

func (g *server) Create(ctx context.Context, r *podapi.CreateRequest) (*podapi.CreateResponse, error) {
	sp, err := decodeSpec(r.Spec)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// The pod's first container sizes its VM; for later ones this does nothing.
	if err := g.s.SizeVM(sp); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	files, standIn, err := takeStdio(g.stdio, stdioReq(r.Stdio))
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	rows, cols := size(r.Console)
	pid, err := g.s.Create(logging.With(ctx, "container", r.Id), CreateRequest{ID: r.Id, Bundle: r.Bundle, Spec: sp, Stdio: files, Rows: rows, Cols: cols, Sandbox: r.Sandbox, Start: r.Start})
	if err != nil {
		closeFile(standIn)
		logging.G(ctx).Error("create", "container", r.Id, "error", err)
		return nil, errgrpc.ToGRPC(err)
	}
	st, _ := g.s.State(r.Id)
	startedInGuest := st.Status != state.StatusCreated // running, or already stopped
	if err := g.watchStandIn(ctx, r.Id, agentproto.InitProcessID, standIn); err != nil {
		// Unwatched, the container would outlive a client that dies: it goes.
		if startedInGuest {
			if kerr := g.s.Kill(context.WithoutCancel(ctx), r.Id, "", true); kerr != nil && !errors.Is(kerr, errdefs.ErrFailedPrecondition) {
				logging.G(ctx).Error("kill a started container whose stand-in cannot be watched", "container", r.Id, "error", kerr)
			}
		}
		if derr := g.s.Delete(context.WithoutCancel(ctx), r.Id); derr != nil {
			logging.G(ctx).Error("remove a container whose stand-in cannot be watched", "container", r.Id, "error", derr)
		}
		return nil, errgrpc.ToGRPC(err)
	}
	if r.Start && !startedInGuest {
		// Nothing of the client's runs between the two (CreateRequest.start): an agent that
		// did not start the container with its creation (an older runv's) gets
		// STARTCONTAINER right after NEWCONTAINER's answer, not a round trip through the
		// client later.
		if err := g.s.Start(ctx, r.Id); err != nil {
			if derr := g.s.Delete(context.WithoutCancel(ctx), r.Id); derr != nil {
				logging.G(ctx).Error("remove a container that could not start", "container", r.Id, "error", derr)
			}
			return nil, errgrpc.ToGRPC(err)
		}
	}
	return &podapi.CreateResponse{GuestPid: int64(pid), StandInWatched: standIn != nil, Started: r.Start}, nil
}

func (g *server) Start(ctx context.Context, r *podapi.ContainerRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.Start(ctx, r.Id))
}

func (g *server) ConnectNetwork(ctx context.Context, r *podapi.NetworkRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.ConnectNetwork(ctx, r.Netns))
}

func (g *server) Exec(ctx context.Context, r *podapi.ExecRequest) (*podapi.ExecResponse, error) {
	var p specs.Process
	if err := json.Unmarshal(r.ProcessSpec, &p); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "process spec: %v", err)
	}
	files, standIn, err := takeStdio(g.stdio, stdioReq(r.Stdio))
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	rows, cols := size(r.Console)
	pid, err := g.s.Exec(ctx, ExecRequest{ID: r.Id, Process: r.Process, Spec: &p, Stdio: files, Rows: rows, Cols: cols})
	if err != nil {
		closeFile(standIn)
		return nil, errgrpc.ToGRPC(err)
	}
	if err := g.watchStandIn(ctx, r.Id, r.Process, standIn); err != nil {
		// Unwatched, the process would outlive a client that dies: it goes.
		if kerr := g.s.Signal(context.WithoutCancel(ctx), r.Id, r.Process, int(unix.SIGKILL), false); kerr != nil {
			logging.G(ctx).Error("kill a process whose stand-in cannot be watched", "container", r.Id, "process", r.Process, "error", kerr)
		}
		return nil, errgrpc.ToGRPC(err)
	}
	return &podapi.ExecResponse{GuestPid: int64(pid), StandInWatched: standIn != nil}, nil
}

func (g *server) Signal(ctx context.Context, r *podapi.SignalRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.Signal(ctx, r.Id, r.Process, int(r.Signal), r.All))
}

func (g *server) Wait(ctx context.Context, r *podapi.WaitRequest) (*podapi.WaitResponse, error) {
	e, err := g.s.Wait(ctx, r.Id, r.Process)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &podapi.WaitResponse{ExitCode: int32(e.ExitCode), Signal: int32(e.Signal), Error: e.Error, OomKilled: e.OOMKilled}
	if r.DeleteContainer && (r.Process == "" || r.Process == agentproto.InitProcessID) {
		// The pod's end (the last container's) starts now, while the answer travels.
		if err := g.s.Delete(ctx, r.Id); err != nil {
			// The client deletes it itself, and says why if that fails too.
			logging.G(ctx).Warn("delete after the exit", "container", r.Id, "error", err)
			return resp, nil
		}
		resp.Deleted, resp.PodEmpty = true, g.s.guestEmpty()
	}
	return resp, nil
}

func (g *server) State(ctx context.Context, r *podapi.ContainerRequest) (*podapi.ContainerState, error) {
	st, err := g.s.State(r.Id)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &podapi.ContainerState{Id: st.ID, Status: st.Status, GuestPid: int64(st.GuestPid), ExitCode: int32(st.ExitCode), CreatedUnixNano: st.Created.UnixNano()}, nil
}

func (g *server) Delete(ctx context.Context, r *podapi.ContainerRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.Delete(ctx, r.Id))
}

func (g *server) ResizePty(ctx context.Context, r *podapi.ResizeRequest) (*podapi.Empty, error) {
	rows, cols := size(r.Size)
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.ResizePty(ctx, r.Id, r.Process, rows, cols))
}

func (g *server) CloseStdin(ctx context.Context, r *podapi.ProcessRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.CloseStdin(ctx, r.Id, r.Process))
}

func (g *server) Pause(ctx context.Context, r *podapi.ContainerRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.Pause(ctx, r.Id))
}

func (g *server) Resume(ctx context.Context, r *podapi.ContainerRequest) (*podapi.Empty, error) {
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.Resume(ctx, r.Id))
}

func (g *server) Update(ctx context.Context, r *podapi.UpdateRequest) (*podapi.Empty, error) {
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources, &res); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "resources: %v", err)
	}
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.Update(ctx, r.Id, &res))
}

func (g *server) Processes(ctx context.Context, r *podapi.ContainerRequest) (*podapi.ProcessesResponse, error) {
	procs, err := g.s.Processes(ctx, r.Id)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	out := &podapi.ProcessesResponse{}
	for _, p := range procs {
		out.GuestPids = append(out.GuestPids, int64(p.GuestPid))
		out.Processes = append(out.Processes, &podapi.ProcessInfo{GuestPid: int64(p.GuestPid), Process: p.Process, Cmd: strings.Join(p.Args, " ")})
	}
	return out, nil
}

func (g *server) Stats(ctx context.Context, r *podapi.ContainerRequest) (*podapi.StatsResponse, error) {
	st, err := g.s.Stats(ctx, r.Id)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &podapi.StatsResponse{CpuUsageNanos: st.CPUUsageNanos, MemoryUsageBytes: st.MemoryUsageBytes, MemoryLimitBytes: st.MemoryLimitBytes, Pids: st.Pids}, nil
}

func (g *server) Events(r *podapi.EventsRequest, stream podapi.Pod_EventsServer) error {
	var since time.Time
	if r.SinceUnixNano > 0 {
		since = time.Unix(0, r.SinceUnixNano)
	}
	replay, sub, err := g.s.events.subscribe(since, r.Id)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer g.s.events.unsubscribe(sub)
	send := func(e Event) error {
		return stream.Send(&podapi.Event{UnixNano: e.Time.UnixNano(), Type: e.Type, Id: e.Container, Process: e.Process, ExitCode: int32(e.ExitCode), Message: e.Message})
	}
	for _, e := range replay {
		if err := send(e); err != nil {
			return err
		}
	}
	for {
		select {
		case e := <-sub.ch:
			if err := send(e); err != nil {
				return err
			}
		case <-sub.failed:
			// Deliver what was buffered, then say why the stream ends.
			for {
				select {
				case e := <-sub.ch:
					if err := send(e); err != nil {
						return err
					}
				default:
					return status.Error(codes.ResourceExhausted, ErrSubscriberTooSlow.Error())
				}
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (g *server) Info(ctx context.Context, _ *podapi.Empty) (*podapi.PodInfo, error) {
	i := g.s.Info()
	return &podapi.PodInfo{Id: i.ID, DaemonPid: int64(i.DaemonPid), VmPid: int64(i.VMPid), Accel: i.Accel, Factory: i.Factory, Containers: i.Containers, BootNanos: int64(i.Boot)}, nil
}

func (g *server) WatchStandIn(ctx context.Context, r *podapi.StandInRequest) (*podapi.Empty, error) {
	files, err := g.stdio.Take(r.Token)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &podapi.Empty{}, errgrpc.ToGRPC(g.s.WatchStandIn(ctx, r.Id, r.Process, files))
}
