package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
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

// eventLog appends events to events.log (JSON lines) and fans them out to live subscribers.
// The file is the replay source for late subscribers.
type eventLog struct {
	mu   sync.Mutex
	path string
	file *os.File
	subs map[*subscription]struct{}
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
	b, _ := json.Marshal(e)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Write(append(b, '\n'))
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
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if e.Time.Before(since) || (filter != "" && filter != e.Container) {
			continue
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
}
