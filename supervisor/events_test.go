package supervisor

import (
	"path/filepath"
	"testing"
	"time"
)

func TestEventLogReplayThenLive(t *testing.T) {
	l, err := openEventLog(filepath.Join(t.TempDir(), "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	t0 := time.Now()
	l.publish(Event{Type: EventCreate, Container: "a", Time: t0})
	l.publish(Event{Type: EventCreate, Container: "b", Time: t0.Add(time.Millisecond)})
	l.publish(Event{Type: EventStart, Container: "a", Time: t0.Add(2 * time.Millisecond)})

	replay, sub, err := l.subscribe(t0.Add(time.Millisecond), "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(replay) != 1 || replay[0].Type != EventStart {
		t.Fatalf("replay since t0+1ms for a: %+v, want the start of a", replay)
	}
	l.publish(Event{Type: EventExit, Container: "a", ExitCode: 3})
	l.publish(Event{Type: EventExit, Container: "b"})
	select {
	case e := <-sub.ch:
		if e.Type != EventExit || e.Container != "a" || e.ExitCode != 3 {
			t.Fatalf("live event %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no live event")
	}
	select {
	case e := <-sub.ch:
		t.Fatalf("event for another container delivered: %+v", e)
	default:
	}
}

// A subscriber that does not read is cut off and told, never silently skipped.
func TestSlowSubscriberIsToldNotSkipped(t *testing.T) {
	l, err := openEventLog(filepath.Join(t.TempDir(), "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	_, sub, _ := l.subscribe(time.Time{}, "")
	for i := 0; i <= subscriberBuffer; i++ {
		l.publish(Event{Type: EventExec, Container: "a"})
	}
	select {
	case <-sub.failed:
	default:
		t.Fatal("overflowing subscriber was not marked failed")
	}
	if len(sub.ch) != subscriberBuffer {
		t.Fatalf("%d buffered events kept, want %d", len(sub.ch), subscriberBuffer)
	}
}
