//go:build integration

package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	httpstreamspdy "k8s.io/apimachinery/pkg/util/httpstream/spdy"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	rt "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/runv-project/runv/test/nettest"
)

// The CRI stream server (streaming Exec, Attach, PortForward) is driven with client-go's
// SPDY clients, kubectl's own. The server listens on 127.0.0.1 in containerd's network
// namespace: the clients' connections are made there.

// streamTransport is an SPDY round tripper whose connections are dialled in containerd's
// network namespace.
func streamTransport(t *testing.T) *httpstreamspdy.SpdyRoundTripper {
	t.Helper()
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		if nerr := nettest.InNetns("/run/netns/"+netnsName, func() {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
		}); nerr != nil {
			return nil, nerr
		}
		return c, err
	}
	tr, err := httpstreamspdy.NewRoundTripperWithConfig(httpstreamspdy.RoundTripperConfig{
		PingPeriod:       5 * time.Second,
		UpgradeTransport: &http.Transport{DialContext: dial, Proxy: nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// streamResult is what a streaming Exec or Attach client saw.
type streamResult struct {
	stdout, stderr string
	exitCode       int // from the server's status (Exec only); -1: none
	err            error
}

// stream runs a remotecommand session (kubectl exec / attach) against a CRI stream URL.
func stream(t *testing.T, rawURL, stdin string, tty bool) streamResult {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("stream URL %q: %v", rawURL, err)
	}
	tr := streamTransport(t)
	ex, err := remotecommand.NewSPDYExecutorForTransports(tr, tr, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdin: strings.NewReader(stdin), Stdout: &stdout, Tty: tty}
	if tty {
		// A terminal's input stays open, as a user's does: its end would hang up the
		// terminal before the process's answer was read (with runc as with runv).
		pr, pw := io.Pipe()
		go pw.Write([]byte(stdin))
		defer pw.Close()
		opts.Stdin = pr
	} else {
		opts.Stderr = &stderr
	}
	c, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err = ex.StreamWithContext(c, opts)
	res := streamResult{stdout: stdout.String(), stderr: stderr.String(), exitCode: -1, err: err}
	var ce utilexec.CodeExitError
	if errors.As(err, &ce) {
		res.exitCode, res.err = ce.Code, nil
	} else if err == nil {
		res.exitCode = 0
	}
	return res
}

// TestCRIStreamingExec: kubectl exec, with and without a terminal: stdin reaches the
// process, stdout and stderr come back (merged on a terminal), and so does the exit code.
func TestCRIStreamingExec(t *testing.T) {
	for _, h := range handlers {
		t.Run(h, func(t *testing.T) {
			p := runPod(t, h, nil)
			c := p.container("main", nil, "sleep", "1000")
			for _, tc := range []struct {
				name string
				tty  bool
			}{{"no tty", false}, {"tty", true}} {
				t.Run(tc.name, func(t *testing.T) {
					r, err := runtimeSvc.Exec(ctx(t), &rt.ExecRequest{
						ContainerId: c, Cmd: []string{"sh", "-c", `read l; echo "out:$l"; echo "err:$l" >&2; exit 5`},
						Tty: tc.tty, Stdin: true, Stdout: true, Stderr: !tc.tty,
					})
					if err != nil {
						t.Fatalf("Exec: %v", err)
					}
					res := stream(t, r.Url, "hello\n", tc.tty)
					if res.err != nil || res.exitCode != 5 {
						t.Fatalf("exec: exit %d, error %v (stdout %q stderr %q); want exit 5", res.exitCode, res.err, res.stdout, res.stderr)
					}
					if tc.tty {
						// The terminal echoes the input and merges stderr, with CRLF line ends.
						for _, want := range []string{"out:hello\r\n", "err:hello\r\n"} {
							if !strings.Contains(res.stdout, want) {
								t.Errorf("terminal output %q lacks %q", res.stdout, want)
							}
						}
						return
					}
					if res.stdout != "out:hello\n" || res.stderr != "err:hello\n" {
						t.Errorf("stdout %q stderr %q, want \"out:hello\\n\" \"err:hello\\n\"", res.stdout, res.stderr)
					}
				})
			}
		})
	}
}

// TestCRIAttach: kubectl attach to a container's init, with and without a terminal:
// stdin reaches it, its output comes back, and its exit is the container's.
func TestCRIAttach(t *testing.T) {
	for _, h := range handlers {
		t.Run(h, func(t *testing.T) {
			p := runPod(t, h, nil)
			for _, tc := range []struct {
				name string
				tty  bool
				code int32
			}{{"no tty", false, 3}, {"tty", true, 4}} {
				t.Run(tc.name, func(t *testing.T) {
					c := p.container("attach-"+strings.ReplaceAll(tc.name, " ", "-"), func(cc *rt.ContainerConfig) {
						cc.Stdin, cc.StdinOnce, cc.Tty = true, true, tc.tty
					}, "sh", "-c", fmt.Sprintf(`read l; echo "out:$l"; echo "err:$l" >&2; exit %d`, tc.code))
					r, err := runtimeSvc.Attach(ctx(t), &rt.AttachRequest{ContainerId: c, Stdin: true, Stdout: true, Stderr: !tc.tty, Tty: tc.tty})
					if err != nil {
						t.Fatalf("Attach: %v", err)
					}
					res := stream(t, r.Url, "hello\n", tc.tty)
					if res.err != nil {
						t.Fatalf("attach: %v (stdout %q stderr %q)", res.err, res.stdout, res.stderr)
					}
					if tc.tty {
						if !strings.Contains(res.stdout, "out:hello\r\n") || !strings.Contains(res.stdout, "err:hello\r\n") {
							t.Errorf("terminal output %q lacks out:hello and err:hello", res.stdout)
						}
						if strings.ContainsRune(res.stdout, 0) {
							t.Errorf("terminal output %q holds a NUL byte, which the container did not print", res.stdout)
						}
					} else if res.stdout != "out:hello\n" || res.stderr != "err:hello\n" {
						t.Errorf("stdout %q stderr %q, want \"out:hello\\n\" \"err:hello\\n\"", res.stdout, res.stderr)
					}
					if st := p.waitExited(c); st.ExitCode != tc.code {
						t.Errorf("container exit code %d, want %d", st.ExitCode, tc.code)
					}
				})
			}
		})
	}
}

// TestCRIPortForward: kubectl port-forward to servers that listen on the pod's loopback
// only (127.0.0.1, ::1), and to a port nobody listens on. runvrunc is runv under containerd's runc shim
// (the pod daemon's route), where the same forwarding must work.
func TestCRIPortForward(t *testing.T) {
	for _, h := range append(handlers, "runvrunc") {
		t.Run(h, func(t *testing.T) {
			p := runPod(t, h, nil)
			// One server on 127.0.0.1, one on ::1 only (containerd tries ::1 when
			// 127.0.0.1 refuses).
			c := p.container("httpd", nil, "sh", "-c", "mkdir -p /www && echo pf-says-hi >/www/index.html && httpd -p [::1]:8082 -h /www && exec httpd -f -p 127.0.0.1:8080 -h /www")
			if !waitFor(60*time.Second, func() bool {
				return p.exec(c, "wget", "-qO-", "http://127.0.0.1:8080/").ExitCode == 0
			}) {
				t.Fatalf("httpd in the pod does not answer on 127.0.0.1:8080")
			}
			r, err := runtimeSvc.PortForward(ctx(t), &rt.PortForwardRequest{PodSandboxId: p.id, Port: []int32{8080}})
			if err != nil {
				t.Fatalf("PortForward: %v", err)
			}
			local := forwardPorts(t, r.Url, "0:8080", "0:8081", "0:8082")
			// Twice: each local connection is a forward of its own.
			for i := range 2 {
				body, err := httpGet(local[0])
				if err != nil || strings.TrimSpace(body) != "pf-says-hi" {
					t.Errorf("GET %d through port-forward: %q, %v; want pf-says-hi", i, body, err)
				}
			}
			// containerd dials ::1 as "localhost" over tcp6, so runc's pod reaches it only on
			// a node whose /etc/hosts names localhost for ::1 too (this one's does not, and
			// the failure ends the whole port-forward session); runv's agent dials ::1
			// itself.
			if h != "runc" {
				if body, err := httpGet(local[2]); err != nil || strings.TrimSpace(body) != "pf-says-hi" {
					t.Errorf("GET through port-forward to a server on ::1 only: %q, %v; want pf-says-hi", body, err)
				}
			}
			// Nobody listens on 8081 in the pod: the forwarded connection is closed with
			// nothing read, as with runc.
			if b, err := readAll(local[1], ""); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || b != "" {
				t.Errorf("port-forward to a closed port: read %q, %v; want the connection closed", b, err)
			}
		})
	}
}

// forwardPorts runs kubectl's port-forward client against a CRI PortForward URL, on
// local ports of the test's own loopback, and returns their addresses in order.
func forwardPorts(t *testing.T, rawURL string, ports ...string) []string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("port-forward URL %q: %v", rawURL, err)
	}
	tr := streamTransport(t)
	dialer := spdy.NewDialer(tr, &http.Client{Transport: tr}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	var out, errOut bytes.Buffer
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, ports, stop, ready, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- pf.ForwardPorts() }()
	t.Cleanup(func() {
		close(stop)
		if err := <-done; err != nil {
			t.Logf("port-forward client ended: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("port-forward client: %v (%s)", err, errOut.String())
	case <-time.After(callTimeout):
		t.Fatal("port-forward client not ready")
	}
	fp, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, len(fp))
	for i, p := range fp {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", p.Local)
	}
	return addrs
}

// httpGet fetches / from addr with HTTP/1.0 (the server closes after its answer) and
// returns the body.
func httpGet(addr string) (string, error) {
	resp, err := readAll(addr, "GET / HTTP/1.0\r\n\r\n")
	if err != nil {
		return "", err
	}
	head, body, ok := strings.Cut(resp, "\r\n\r\n")
	if !ok || !strings.HasPrefix(head, "HTTP/1.") || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200 ") {
		return "", fmt.Errorf("not a 200 answer: %q", resp)
	}
	return body, nil
}

// readAll connects to addr, sends req, and reads until the connection ends.
func readAll(addr, req string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	return exchange(c, req)
}

// exchange sends req on c and reads until the server closes, then closes c.
func exchange(c net.Conn, req string) (string, error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
