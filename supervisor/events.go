package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Event types.
const (
	EventCreate = "create"
	EventStart  = "start"
	EventExec   = "exec"
	EventExit   = "exit"
	EventPause  = "pause"
	EventResume = "resume"
	EventDelete = "delete"
	EventVMExit = "vm-exit"
)

// Event is one thing that happened in the pod.
type Event struct {
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`
	Container string    `json:"id,omitempty"`
	Process   string    `json:"process,omitempty"`
	ExitCode  int       `json:"exitCode,omitempty"`
	Message   string    `json:"message,omitempty"`
}

// ErrSubscriberTooSlow ends a subscription whose reader fell behind by more than its buffer:
// the subscriber is told rather than silently losing events, and can resubscribe from the
// last timestamp it saw (the log replays it).
var ErrSubscriberTooSlow = errors.New("event subscriber fell behind; resubscribe with the last timestamp seen to replay the rest")

const subscriberBuffer = 256

const (
	// maxEventMessage caps an event's message (an exit's comes from the guest).
	maxEventMessage = 4 << 10
	// maxEventLine is longer than any line publish writes (a message escapes to at most 6×
	// its length); replay skips longer ones.
	maxEventLine = 64 << 10
)

// eventLog appends events to events.log (JSON lines) and fans them out to live subscribers.
// The file is the replay source for late subscribers.
type eventLog struct {
	mu   sync.Mutex
	path string
	file *os.File
	subs map[*subscription]struct{}
	// torn: the last write to file failed, maybe halfway through a line.
	torn bool
}

type subscription struct {
	ch     chan Event
	filter string
	// failed is closed when the subscriber overflowed.
	failed chan struct{}
}

func openEventLog(path string) (*eventLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open event log: %w", err)
	}
	return &eventLog{path: path, file: f, subs: map[*subscription]struct{}{}}, nil
}

func (l *eventLog) publish(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(e.Message) > maxEventMessage {
		// The message of an exit comes from the guest: it must not grow the log at will.
		e.Message = e.Message[:maxEventMessage] + "... (truncated)"
	}
	b, _ := json.Marshal(e)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		line := append(b, '\n')
		if l.torn {
			// The last write stopped short (a full disk): end that fragment first, so that it
			// stays a line of its own that replay skips, and this event stays readable.
			line = append([]byte{'\n'}, line...)
		}
		_, err := l.file.Write(line)
		l.torn = err != nil
	}
	for s := range l.subs {
		if s.filter != "" && s.filter != e.Container {
			continue
		}
		select {
		case s.ch <- e:
		default:
			close(s.failed)
			delete(l.subs, s)
		}
	}
}

// subscribe replays the events recorded since `since` (zero: none) and then delivers live
// ones. The replay and the registration happen under the lock, so nothing falls in between.
func (l *eventLog) subscribe(since time.Time, filter string) (replay []Event, s *subscription, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !since.IsZero() {
		replay, err = l.readSince(since, filter)
		if err != nil {
			return nil, nil, err
		}
	}
	s = &subscription{ch: make(chan Event, subscriberBuffer), filter: filter, failed: make(chan struct{})}
	l.subs[s] = struct{}{}
	return replay, s, nil
}

func (l *eventLog) unsubscribe(s *subscription) {
	l.mu.Lock()
	delete(l.subs, s)
	l.mu.Unlock()
}

func (l *eventLog) readSince(since time.Time, filter string) ([]Event, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, fmt.Errorf("replay event log: %w", err)
	}
	defer f.Close()
	var out []Event
	r := bufio.NewReaderSize(f, maxEventLine)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// No event is this long: a torn or foreign line. Skip to its end.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			line = nil
		}
		var e Event
		if len(line) > 0 && json.Unmarshal(line, &e) == nil &&
			!e.Time.Before(since) && (filter == "" || filter == e.Container) {
			out = append(out, e)
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("replay event log: %w", err)
		}
	}
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
}
