//go:build integration

package integration

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runcEvent is one line of `runv events`, as runc prints them.
type runcEvent struct {
	Type string          `json:"type"`
	ID   string          `json:"id"`
	Data json.RawMessage `json:"data"`
}

type statsData struct {
	CPU struct {
		Usage struct {
			Total uint64 `json:"total"`
		} `json:"usage"`
	} `json:"cpu"`
	Memory struct {
		Usage struct {
			Usage uint64 `json:"usage"`
			Limit uint64 `json:"limit"`
		} `json:"usage"`
	} `json:"memory"`
	Pids struct {
		Current uint64 `json:"current"`
	} `json:"pids"`
}

func statsOf(t *testing.T, stateRoot, id string) statsData {
	t.Helper()
	r := mustRunv(t, stateRoot, "events", "--stats", id)
	var ev runcEvent
	if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil || ev.Type != "stats" || ev.ID != id {
		t.Fatalf("events --stats is not one stats event of %s: %v: %s", id, err, r)
	}
	var s statsData
	if err := json.Unmarshal(ev.Data, &s); err != nil {
		t.Fatalf("stats data: %v: %s", err, ev.Data)
	}
	return s
}

// pause freezes the container's processes (a counter stops advancing), resume thaws them.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /dev/shm/n; sleep 0.05; done"))
	counter := func() string { return runvIn(t, stateRoot, nil, "exec", id, "cat", "/dev/shm/n").stdout }

	mustRunv(t, stateRoot, "pause", id)
	if st := stateOf(t, stateRoot, id); st.Status != "paused" {
		t.Fatalf("state after pause: %q, want paused", st.Status)
	}
	if l := mustRunv(t, stateRoot, "list").stdout; !regexp.MustCompile(id + `\s+\d+\s+paused`).MatchString(l) {
		t.Fatalf("list does not show %s paused:\n%s", id, l)
	}
	mustRunv(t, stateRoot, "resume", id)
	if st := stateOf(t, stateRoot, id); st.Status != "running" {
		t.Fatalf("state after resume: %q, want running", st.Status)
	}
	first := counter()
	deadline := time.Now().Add(30 * time.Second)
	for counter() == first {
		if time.Now().After(deadline) {
			t.Fatal("the counter does not advance after resume")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Frozen: its cpu usage stands still over several stats events (the events are the
	// clock: the loop would run twice per interval).
	mustRunv(t, stateRoot, "pause", id)
	bg := startRunv(t, stateRoot, nil, "events", "--interval", "100ms", id)
	statsLine := regexp.MustCompile(`\{"type":"stats".*\n`)
	deadline = time.Now().Add(30 * time.Second)
	for len(statsLine.FindAllString(bg.stdout.String(), -1)) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 4 stats events within 30s: %q", bg.stdout.String())
		}
		select {
		case <-bg.stdout.changed:
		case <-time.After(time.Second):
		}
	}
	var totals []uint64
	for _, line := range statsLine.FindAllString(bg.stdout.String(), -1) {
		var ev runcEvent
		var s statsData
		if json.Unmarshal([]byte(line), &ev) != nil || json.Unmarshal(ev.Data, &s) != nil {
			t.Fatalf("bad stats line %q", line)
		}
		totals = append(totals, s.CPU.Usage.Total)
	}
	for _, v := range totals[1:] {
		if v != totals[0] {
			t.Fatalf("a paused container used cpu: %v ns over successive stats events", totals)
		}
	}
	mustRunv(t, stateRoot, "resume", id)
	deleteAndCheck(t, stateRoot, id)
	if r := bg.wait(t, 30*time.Second); r.code != 0 {
		t.Fatalf("events after delete: %s", r)
	}
}

// events prints runc's JSON lines: the container's lifecycle (replayed from its creation)
// and stats every interval; it ends when the container stops.
func TestEvents(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))
	mustRunv(t, stateRoot, "exec", id, "true")

	bg := startRunv(t, stateRoot, nil, "events", "--interval", "200ms", id)
	bg.stdout.waitFor(t, regexp.MustCompile(`"type":"stats"`), 30*time.Second)
	mustRunv(t, stateRoot, "pause", id)
	mustRunv(t, stateRoot, "resume", id)
	bg.stdout.waitFor(t, regexp.MustCompile(`"type":"resume"`), 30*time.Second)
	mustRunv(t, stateRoot, "kill", id, "KILL")
	r := bg.wait(t, 30*time.Second)
	if r.code != 0 {
		t.Fatalf("events after the container stopped: %s", r)
	}

	var types []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev runcEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event line is not JSON: %v: %q", err, line)
		}
		if ev.ID != id {
			t.Fatalf("event of another container: %q", line)
		}
		if ev.Type == "stats" {
			var s statsData
			if err := json.Unmarshal(ev.Data, &s); err != nil || s.Memory.Usage.Usage == 0 || s.Pids.Current == 0 {
				t.Fatalf("stats event without memory or pids figures: %q", line)
			}
			continue
		}
		types = append(types, ev.Type)
		if ev.Type == "exit" && strings.Contains(line, `"process":"init"`) && !strings.Contains(line, `"exitCode":137`) {
			t.Fatalf("exit event of the init does not carry 137: %q", line)
		}
	}
	// The exec'd process's exit races with nothing here: it ended before events started.
	want := []string{"create", "start", "exec", "exit", "pause", "resume", "exit"}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Fatalf("lifecycle events %v, want %v\n%s", types, want, r.stdout)
	}
	mustRunv(t, stateRoot, "delete", id)
	assertEmptyRoot(t, stateRoot)
}

// update changes the cgroup limits in the VM, field by field: a later update of another
// resource keeps the earlier one.
func TestUpdate(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))

	mustRunv(t, stateRoot, "update", "--memory", "64m", "--cpu-quota", "50000", "--cpu-period", "100000", id)
	if got := statsOf(t, stateRoot, id).Memory.Usage.Limit; got != 64<<20 {
		t.Fatalf("memory limit after update --memory 64m: %d, want %d", got, 64<<20)
	}
	mustRunv(t, stateRoot, "update", "--pids-limit", "20", id)
	if got := statsOf(t, stateRoot, id).Memory.Usage.Limit; got != 64<<20 {
		t.Fatalf("memory limit after an update of the pids limit only: %d, want it kept at %d", got, 64<<20)
	}
	r := runvIn(t, stateRoot, []byte(`{"memory": {"limit": 50331648}}`), "update", "-r", "-", id)
	if r.code != 0 {
		t.Fatalf("update -r -: %s", r)
	}
	if got := statsOf(t, stateRoot, id).Memory.Usage.Limit; got != 48<<20 {
		t.Fatalf("memory limit after update -r -: %d, want %d", got, 48<<20)
	}
	// The pids limit of 20 holds: 25 more processes cannot all start.
	// (The sleeps must not hold the exec's stdio, or its output would not end before they do.)
	r = runvIn(t, stateRoot, nil, "exec", id, "sh", "-c", "for i in $(seq 25); do sleep 1000 >/dev/null 2>&1 & done")
	if !strings.Contains(r.stderr, "can't fork") {
		t.Fatalf("25 processes under a pids limit of 20: %s", r)
	}
	deleteAndCheck(t, stateRoot, id)
}

// kill takes signal names and numbers and --all; delete --force removes a running container.
func TestKillSignalsAndDeleteForce(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := runDetached(t, stateRoot, newBundle(t, "sh", "-c", `trap "echo usr1 >> /dev/shm/sigs" USR1; trap "echo hup >> /dev/shm/sigs" HUP; touch /dev/shm/sigs; while :; do sleep 0.05; done`))
	sigs := func() string { return runvIn(t, stateRoot, nil, "exec", id, "cat", "/dev/shm/sigs").stdout }
	// The traps are set once the log exists: a signal before that would be lost.
	deadline := time.Now().Add(30 * time.Second)
	for runvIn(t, stateRoot, nil, "exec", id, "test", "-e", "/dev/shm/sigs").code != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the container never set its traps")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, sig := range []string{"USR1", "SIGUSR1", "usr1", "10", "HUP", "1"} {
		mustRunv(t, stateRoot, "kill", id, sig)
		want := strings.Repeat("usr1\n", min(i+1, 4)) + strings.Repeat("hup\n", max(i-3, 0))
		deadline := time.Now().Add(30 * time.Second)
		for sigs() != want {
			if time.Now().After(deadline) {
				t.Fatalf("after kill %s the container's trap log is %q, want %q", sig, sigs(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	mustRunv(t, stateRoot, "kill", "--all", id, "KILL")
	waitStatus(t, stateRoot, id, "stopped")
	mustRunv(t, stateRoot, "delete", id)

	id = runDetached(t, stateRoot, newBundle(t, "sleep", "1000"))
	shim := stateOf(t, stateRoot, id).Pid
	mustRunv(t, stateRoot, "delete", "--force", id)
	if r := runvIn(t, stateRoot, nil, "state", id); r.code == 0 {
		t.Fatalf("state after delete --force: %s", r)
	}
	waitGone(t, shim, 15*time.Second)
	assertEmptyRoot(t, stateRoot)
}

// kill --all reaches every process of the container, not just its init.
func TestKillAll(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	// The shell is PID 1 of the container's pid namespace: without a handler it ignores
	// TERM. The two sleeps do not; once they die, wait returns and the shell exits 0.
	id := runDetached(t, stateRoot, newBundle(t, "sh", "-c", "sleep 1000 & sleep 1000 & wait"))
	// The shell may not have started its children yet: wait until ps shows all three.
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(mustRunv(t, stateRoot, "ps", id).stdout, "\n") < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("the container never had 3 processes:\n%s", mustRunv(t, stateRoot, "ps", id).stdout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mustRunv(t, stateRoot, "kill", "--all", id, "TERM")
	waitStatus(t, stateRoot, id, "stopped")
	// As runc: kill --all of a stopped container succeeds (containerd's runc shim sends it
	// after every stop), while a plain kill says the container is not running.
	mustRunv(t, stateRoot, "kill", "--all", id, "KILL")
	if r := runvIn(t, stateRoot, nil, "kill", id, "KILL"); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("kill of a stopped container: want \"not running\", got %s", r)
	}
	mustRunv(t, stateRoot, "delete", id)
	assertEmptyRoot(t, stateRoot)
}
