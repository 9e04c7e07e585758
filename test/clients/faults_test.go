//go:build integration

package clients

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fault matrix (test/integration/faults_test.go) through the clients: the pod's QEMU or
// pod daemon SIGKILLed under a running container. The client waiting for the container
// learns its end (137) instead of hanging, removes it as usual, and the suite's leak check
// finds nothing of the pod.

// podParts are the host processes of a pod that the tests kill, by a word of their
// command line.
var podParts = []struct{ name, word string }{
	{"qemu", "qemu-system"},
	{"pod daemon", "--solo-namespaced"},
}

// killPodPart SIGKILLs the process of container id's pod whose command line has word; the
// pod is found through runv's state under roots.
func killPodPart(t *testing.T, x *tc, roots []string, id, word string) {
	t.Helper()
	var podDir string
	for _, r := range roots {
		b, err := os.ReadFile(filepath.Join(r, id, "state.json"))
		if err != nil {
			continue
		}
		var st struct {
			PodDir string `json:"podDir"`
		}
		if err := json.Unmarshal(b, &st); err == nil && st.PodDir != "" {
			podDir = st.PodDir
		}
	}
	if podDir == "" {
		x.fatal(result{}, "no runv state for container %s under %v", id, roots)
	}
	for _, p := range runvProcesses([]string{podDir}, nil) {
		if strings.Contains(p.cmdline, word) {
			syscallKill(p.pid)
			return
		}
	}
	x.fatal(result{}, "no process %q for the pod %s of container %s", word, podDir, id)
}

// TestDockerPodKilled: docker wait returns 137 when the container's VM or pod daemon is
// killed, and docker rm removes the container.
func TestDockerPodKilled(t *testing.T) {
	for _, part := range podParts {
		t.Run(part.name, func(t *testing.T) {
			d, x, name := newDockerTest(t)
			x.must(d.docker(t, cmdOpts{}, "run", "-d", "--runtime", "runv", "--name", name, img.Name, "sleep", "1000"))
			wait := make(chan result, 1)
			go func() { wait <- d.docker(t, cmdOpts{timeout: 3 * time.Minute}, "wait", name) }()
			killPodPart(t, x, d.roots(), d.idOf(name), part.word)
			select {
			case r := <-wait:
				if strings.TrimSpace(r.stdout) != "137" {
					x.errorf(r, "want docker wait to report 137 after the pod's %s was killed", part.name)
				}
			case <-time.After(60 * time.Second):
				x.fatal(d.docker(t, cmdOpts{}, "ps", "-a"), "docker wait still waits 60s after the pod's %s was killed", part.name)
			}
			x.must(d.docker(t, cmdOpts{}, "rm", name))
		})
	}
}

// TestContainerdPodKilled: ctr run (containerd's runc shim running runv) returns 137 when
// the container's VM or pod daemon is killed; the task and container are removed.
func TestContainerdPodKilled(t *testing.T) {
	for _, part := range podParts {
		t.Run(part.name, func(t *testing.T) {
			c, x, id := newCtrTest(t)
			run := make(chan result, 1)
			go func() {
				run <- c.ctr(t, cmdOpts{timeout: 3 * time.Minute}, "run", "--runc-binary", runtimePath, img.Qualified, id, "sleep", "1000")
			}()
			if status, _ := c.waitTask(t, x, id, "RUNNING", 60*time.Second); status != "RUNNING" {
				x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "task %s is %q, want RUNNING", id, status)
			}
			killPodPart(t, x, c.roots(), id, part.word)
			select {
			case r := <-run:
				if r.code != 137 {
					x.errorf(r, "want ctr run to exit 137 after the pod's %s was killed", part.name)
				}
			case <-time.After(60 * time.Second):
				x.fatal(c.ctr(t, cmdOpts{}, "tasks", "ls"), "ctr run still waits 60s after the pod's %s was killed", part.name)
			}
			if out, _ := c.ctrQuiet("tasks", "ls"); strings.Contains(out, id) {
				x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
			}
			x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
		})
	}
}
