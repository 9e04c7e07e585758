package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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

// FuzzEventReplay replays an arbitrary events.log (torn by a full disk, or with the long
// message of a guest): replay never fails on a bad line, returns only events at or after
// `since` for the container asked, and skips nothing that publish wrote after the damage.
func FuzzEventReplay(f *testing.F) {
	f.Add([]byte(`{"time":"2026-01-01T00:00:00Z","type":"exit","id":"a","exitCode":3}`+"\n"), "a")
	f.Add([]byte(`{"time":"2026-01-01T00:00:00Z","type":"exit","id":"a","message":"`+strings.Repeat("x", 70<<10)+`"}`+"\n"), "")
	f.Add([]byte(`{"time":"2026-01-01T00:00:00Z","ty`), "")
	f.Add([]byte("\n\n{}\n[]\nnull\n"), "b")
	f.Fuzz(func(t *testing.T, data []byte, filter string) {
		if !utf8.ValidString(filter) {
			t.Skip("container ids are validated ASCII; JSON would rewrite this one")
		}
		path := filepath.Join(t.TempDir(), "events.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := openEventLog(path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.close()
		// Whatever is in the file, an event published now must replay.
		since := time.Unix(1<<32, 0) // after any time the fuzzer is likely to write
		l.torn = true                // as after a failed write: the file may end mid-line
		l.publish(Event{Type: EventExit, Container: filter, Time: since, Message: strings.Repeat("\x00", 2*maxEventMessage)})
		out, err := l.readSince(since, filter)
		if err != nil {
			t.Fatalf("replay failed: %v", err)
		}
		found := false
		for _, e := range out {
			if e.Time.Before(since) || (filter != "" && e.Container != filter) {
				t.Fatalf("replayed %+v for since=%v filter=%q", e, since, filter)
			}
			found = found || (e.Type == EventExit && e.Time.Equal(since))
		}
		if !found {
			t.Fatalf("the event published after the damage did not replay: %+v", out)
		}
	})
}
