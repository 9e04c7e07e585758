package shimv2

import (
	"context"

	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/runtime"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/runv-project/runv/logging"
)

// publisher sends the task events containerd expects (its CRI plugin, for one, learns of
// exits and OOM kills only from them). A failed publish is logged: containerd also polls
// State and Wait, so one lost event does not lose an exit.
type publisher struct {
	pub eventPublisher
}

func newPublisher(p eventPublisher) *publisher { return &publisher{pub: p} }

func (p *publisher) publish(ctx context.Context, topic string, ev events.Event) {
	if err := p.pub.Publish(ctx, topic, ev); err != nil {
		logging.G(ctx).Warn("publish event", "topic", topic, "error", err)
	}
}

func (p *publisher) close(ctx context.Context) {
	if err := p.pub.Close(); err != nil {
		logging.G(ctx).Warn("close event publisher", "error", err)
	}
}

func (p *publisher) taskCreate(ctx context.Context, r *taskapi.CreateTaskRequest, pid uint32) {
	ev := &eventsapi.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Pid: pid, Checkpoint: r.Checkpoint,
		IO: &eventsapi.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	}
	for _, m := range r.Rootfs {
		ev.Rootfs = append(ev.Rootfs, &types.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	p.publish(ctx, runtime.TaskCreateEventTopic, ev)
}

func (p *publisher) taskStart(ctx context.Context, id string, pid uint32) {
	p.publish(ctx, runtime.TaskStartEventTopic, &eventsapi.TaskStart{ContainerID: id, Pid: pid})
}

func (p *publisher) execAdded(ctx context.Context, id, execID string) {
	p.publish(ctx, runtime.TaskExecAddedEventTopic, &eventsapi.TaskExecAdded{ContainerID: id, ExecID: execID})
}

func (p *publisher) execStarted(ctx context.Context, id, execID string, pid uint32) {
	p.publish(ctx, runtime.TaskExecStartedEventTopic, &eventsapi.TaskExecStarted{ContainerID: id, ExecID: execID, Pid: pid})
}

// taskExit publishes a process's exit; an OOM kill is published first, as containerd's
// runc shim does, so the CRI reports the container's reason as OOMKilled.
func (p *publisher) taskExit(ctx context.Context, pr *proc, pid uint32) {
	if pr.exit.OOMKilled {
		p.publish(ctx, runtime.TaskOOMEventTopic, &eventsapi.TaskOOM{ContainerID: pr.container})
	}
	p.publish(ctx, runtime.TaskExitEventTopic, &eventsapi.TaskExit{
		ContainerID: pr.container, ID: pr.eventID(), Pid: pid,
		ExitStatus: uint32(pr.exit.ExitCode), ExitedAt: timestamppb.New(pr.exitAt),
	})
}

func (p *publisher) taskDelete(ctx context.Context, id string, r *taskapi.DeleteResponse) {
	p.publish(ctx, runtime.TaskDeleteEventTopic, &eventsapi.TaskDelete{
		ContainerID: id, ID: id, Pid: r.Pid, ExitStatus: r.ExitStatus, ExitedAt: r.ExitedAt,
	})
}

func (p *publisher) paused(ctx context.Context, id string) {
	p.publish(ctx, runtime.TaskPausedEventTopic, &eventsapi.TaskPaused{ContainerID: id})
}

func (p *publisher) resumed(ctx context.Context, id string) {
	p.publish(ctx, runtime.TaskResumedEventTopic, &eventsapi.TaskResumed{ContainerID: id})
}
