//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/leakcheck"
	"github.com/runv-project/runv/test/nettest"
)

// podDaemonOf is the pid of the pod daemon of the pod directory podDir, as its containers'
// records under the state root name it (a daemon that a `runv run` started with itself has
// no pod on its command line: cmd/runv/prefork.go).
func podDaemonOf(t *testing.T, podDir string) int {
	t.Helper()
	records, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(podDir)), "*", "state.json"))
	for _, r := range records {
		b, err := os.ReadFile(r)
		if err != nil {
			continue
		}
		var rec struct {
			PodDir string `json:"podDir"`
			Daemon struct {
				Pid int `json:"pid"`
			} `json:"daemon"`
		}
		if json.Unmarshal(b, &rec) != nil || rec.PodDir != podDir {
			continue
		}
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.Daemon.Pid)); strings.Contains(string(cmdline), "--solo-namespaced") {
			return rec.Daemon.Pid
		}
	}
	t.Fatalf("no pod daemon found for %s", podDir)
	return 0
}

// exchangeIn connects to addr from inside the network namespace at nsPath, sends req,
// half-closes, and reads until the server closes.
func exchangeIn(nsPath, addr string, req []byte) ([]byte, error) {
	var c net.Conn
	var err error
	if nerr := nettest.InNetns(nsPath, func() { c, err = net.DialTimeout("tcp4", addr, 10*time.Second) }); nerr != nil {
		return nil, nerr
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(req)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	b, err := io.ReadAll(c)
	if err == nil {
		err = <-werr
	}
	return b, err
}

// TestPortForwardIntoTheVM: 127.0.0.1:PORT in the pod's network namespace, where
// containerd's CRI dials for `kubectl port-forward`, reaches the same port on the VM's
// loopback, for a port runv was never told about. A server that answers only after the
// client's half close gets 1 MiB through and answers it (half close and flow control, both
// ways, through the real VM); a port nobody listens on closes the connection. Once the
// pod is deleted, and after its pod daemon was SIGKILLed, nothing is steered any more and
// no BPF link is left on the namespace.
func TestPortForwardIntoTheVM(t *testing.T) {
	for _, end := range []string{"delete", "pod daemon killed"} {
		t.Run(end, func(t *testing.T) {
			r := shortRoot(t)
			n := newPodNet(t, false)
			id := newID(t)
			b := newBundleWith(t, func(s *specs.Spec) { setNetNS(s, n.path()) }, "nc", "-ll", "-p", "9000", "-e", "tr", "a-z", "A-Z")
			mustRunv(t, r, "run", "-d", "--bundle", b, id)
			defer runvIn(t, r, nil, "delete", "--force", id)
			waitStatus(t, r, id, "running")
			if l := leakcheck.NetnsBPFLinks(t, n.path()); l != 1 {
				t.Errorf("%d BPF links on the pod's namespace while it runs, want 1 (the steering)", l)
			}

			req := bytes.Repeat([]byte("port-forward "), 1<<20/13)
			want := bytes.ToUpper(req)
			var got []byte
			var err error
			// nc starts with the container: until it listens, the guest refuses and the
			// connection closes empty.
			waitUntil(t, "an answer through 127.0.0.1:9000 in the pod's namespace", 90*time.Second, func() bool {
				got, err = exchangeIn(n.path(), "127.0.0.1:9000", req)
				return err == nil && len(got) > 0
			})
			if !bytes.Equal(got, want) {
				t.Errorf("answer of %d bytes (%q...), want the %d bytes upper-cased", len(got), got[:min(len(got), 20)], len(want))
			}
			// Our own write may fail too (reset, not connected): the connection is gone
			// either way; only an answer, or waiting for one, is wrong.
			if b, err := exchangeIn(n.path(), "127.0.0.1:9001", []byte("anyone?")); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("a port nobody listens on in the VM: read %q, %v; want the connection closed", b, err)
			}

			podDir := podDirOf(t, r, id)
			if end == "pod daemon killed" {
				qemuPid := readPid(t, filepath.Join(podDir, "vm", "qemu.pid"))
				unix.Kill(podDaemonOf(t, podDir), unix.SIGKILL)
				waitUntil(t, "QEMU gone", 15*time.Second, func() bool { return !alive(qemuPid) })
				// The kernel releases the link once the last descriptor is gone.
				waitUntil(t, "no BPF link on the namespace", 15*time.Second, func() bool {
					return leakcheck.NetnsBPFLinks(t, n.path()) == 0
				})
			}
			deleteAndCheck(t, r, id)
			if l := leakcheck.NetnsBPFLinks(t, n.path()); l != 0 {
				t.Errorf("%d BPF links left on the namespace after delete", l)
			}
			var c net.Conn
			nettest.InNetns(n.path(), func() { c, err = net.DialTimeout("tcp4", "127.0.0.1:9000", 10*time.Second) })
			if !errors.Is(err, syscall.ECONNREFUSED) {
				if c != nil {
					c.Close()
				}
				t.Errorf("dial 127.0.0.1:9000 after the pod: %v, want connection refused (nothing steered)", err)
			}
		})
	}
}

// TestPortForwardThroughput is make bench's port-forward figure: 32 MiB from a server in
// the pod to a client on the host, through 127.0.0.1 of the pod's namespace (the path of
// kubectl port-forward: the steering, the agent's stream channel) and through the pod's
// address (the mirrored NIC), the median of N downloads each, in one run. It is a
// measurement, run when RUNV_PF_BENCH=1 (N: RUNV_PF_BENCH_N, default 5); every download
// must bring the whole 32 MiB.
func TestPortForwardThroughput(t *testing.T) {
	if os.Getenv("RUNV_PF_BENCH") != "1" {
		t.Skip("a measurement for make bench: set RUNV_PF_BENCH=1")
	}
	runs := 5
	if v, err := strconv.Atoi(os.Getenv("RUNV_PF_BENCH_N")); err == nil && v > 0 {
		runs = v
	}
	const size = 32 << 20
	r := shortRoot(t)
	n := newPodNet(t, true)
	id := newID(t)
	b := newBundleWith(t, func(s *specs.Spec) { setNetNS(s, n.path()) },
		"nc", "-ll", "-p", "9000", "-e", "dd", "if=/dev/zero", "bs=65536", fmt.Sprintf("count=%d", size/65536))
	mustRunv(t, r, "run", "-d", "--bundle", b, id)
	defer deleteAndCheck(t, r, id)
	waitStatus(t, r, id, "running")
	download := func(nsPath, addr string) (time.Duration, int64, error) {
		var c net.Conn
		var err error
		start := time.Now()
		dial := func() { c, err = net.DialTimeout("tcp4", addr, 10*time.Second) }
		if nsPath == "" {
			dial()
		} else if nerr := nettest.InNetns(nsPath, dial); nerr != nil {
			return 0, 0, nerr
		}
		if err != nil {
			return 0, 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		got, err := io.Copy(io.Discard, c)
		return time.Since(start), got, err
	}
	waitUntil(t, "the server in the pod", 90*time.Second, func() bool {
		_, got, err := download(n.path(), "127.0.0.1:9000")
		return err == nil && got == size
	})
	paths := []struct{ name, ns, addr string }{
		{"port-forward (127.0.0.1 in the pod's namespace)", n.path(), "127.0.0.1:9000"},
		{"pod address (" + n.podV4 + ")", "", n.podV4 + ":9000"},
	}
	medians := make([]time.Duration, len(paths))
	for i, p := range paths {
		var ds []time.Duration
		for range runs {
			d, got, err := download(p.ns, p.addr)
			if err != nil || got != size {
				t.Fatalf("download through %s: %d of %d bytes, %v", p.name, got, size, err)
			}
			ds = append(ds, d)
		}
		sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
		medians[i] = ds[len(ds)/2]
		fmt.Printf("port-forward bench: %-50s 32 MiB in %v (median of %d, min %v): %.0f MiB/s\n",
			p.name, medians[i].Round(time.Millisecond), runs, ds[0].Round(time.Millisecond), float64(size>>20)/medians[i].Seconds())
	}
	fmt.Printf("port-forward bench: port-forward / pod address throughput = %.2f\n", medians[1].Seconds()/medians[0].Seconds())
}
