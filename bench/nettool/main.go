// Command nettool measures a pod's network for bench/run.sh: a server that runs in the
// container (runv's or runc's, same bundle, same kind of namespace) and a client on the
// host.
//
//	nettool serve [-listen :5001] [-sockbuf BYTES]
//	    per connection, the first line is a command: "sink" reads until EOF and answers the
//	    byte count; "source SECS" writes for SECS seconds, then closes; "ping" answers "pong"
//	    and closes.
//	nettool send -addr IP:PORT [-secs 10]      host → pod: one stream for SECS seconds
//	nettool recv -addr IP:PORT [-secs 10]      pod → host: one stream for SECS seconds
//	nettool rr -addr IP:PORT [-n 200]          connect + request + answer + close, N times
//
//	nettool as a guest's init (PID 1, no arguments): see guestInit.
//
// -sockbuf sets the connections' socket buffers (SO_SNDBUF/SO_RCVBUF; 0: the kernel's
// autotuning).
//
// Throughput lines read "LABEL mbit_s=… bytes=… secs=…" (the receiver's count over the
// sender's time, up to the receiver's acknowledgement); round trips read like benchtool's
// timing lines: "LABEL n=… min=… median=… mean=… max=… (ms)".
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const chunk = 128 << 10

func main() {
	// The kernel starts an initrd's /init without arguments; in a container nettool serve
	// may be PID 1 too, but has its command.
	if os.Getpid() == 1 && len(os.Args) == 1 {
		err := guestInit()
		fmt.Println("nettool:", err)
		// The init of a guest must not exit: the kernel would panic over it and the
		// console would lose the error. Power off instead.
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nettool serve|send|recv|rr ...")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	listen := fs.String("listen", ":5001", "serve: address to listen on")
	addr := fs.String("addr", "", "client: the server's IP:PORT")
	secs := fs.Int("secs", 10, "send/recv: seconds")
	n := fs.Int("n", 200, "rr: round trips")
	label := fs.String("label", "", "label of the result line")
	sockbuf := fs.Int("sockbuf", 0, "socket buffer bytes (0: autotuning)")
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(*listen, *sockbuf)
	case "send":
		err = send(*addr, *secs, *label, *sockbuf)
	case "recv":
		err = recv(*addr, *secs, *label, *sockbuf)
	case "rr":
		err = rr(*addr, *n, *label)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}

func serve(listen string, sockbuf int) error {
	l, err := listenTCP(listen, sockbuf)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go handle(c)
	}
}

// listenTCP listens on addr; accepted connections inherit the listener's socket buffers,
// set before the handshake so that TCP's window scale fits them.
func listenTCP(addr string, sockbuf int) (net.Listener, error) {
	lc := net.ListenConfig{Control: bufferControl(sockbuf)}
	return lc.Listen(context.Background(), "tcp", addr)
}

// bufferControl sets both socket buffers to n bytes (nothing when n is 0), beyond the
// rmem_max/wmem_max sysctls where the process may (CAP_NET_ADMIN: the *BUFFORCE options).
func bufferControl(n int) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if n == 0 {
			return nil
		}
		return c.Control(func(fd uintptr) {
			for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], n) != nil {
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], n)
				}
			}
		})
	}
}

func handle(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return
	}
	switch f[0] {
	case "sink":
		n, _ := io.Copy(io.Discard, r)
		fmt.Fprintf(c, "%d\n", n)
	case "source":
		secs, _ := strconv.Atoi(f[len(f)-1])
		buf := make([]byte, chunk)
		end := time.Now().Add(time.Duration(secs) * time.Second)
		for time.Now().Before(end) {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case "ping":
		io.WriteString(c, "pong\n")
	}
}

func dial(addr string, sockbuf int) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, Control: bufferControl(sockbuf)}
	return d.Dial("tcp", addr)
}

func throughput(label string, bytes int64, d time.Duration) {
	fmt.Printf("%-34s mbit_s=%.0f bytes=%d secs=%.2f\n", label, float64(bytes)*8/d.Seconds()/1e6, bytes, d.Seconds())
}

func send(addr string, secs int, label string, sockbuf int) error {
	c, err := dial(addr, sockbuf)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "sink\n"); err != nil {
		return err
	}
	buf := make([]byte, chunk)
	start := time.Now()
	end := start.Add(time.Duration(secs) * time.Second)
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no byte count from the sink: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		return fmt.Errorf("byte count %q: %w", line, err)
	}
	throughput(label, n, time.Since(start))
	return nil
}

func recv(addr string, secs int, label string, sockbuf int) error {
	c, err := dial(addr, sockbuf)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "source %d\n", secs); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(time.Duration(secs)*time.Second + time.Minute))
	start := time.Now()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return err
	}
	throughput(label, n, time.Since(start))
	return nil
}

func rr(addr string, n int, label string) error {
	var ds []time.Duration
	buf := make([]byte, 16)
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := dial(addr, 0)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			c.Close()
			return err
		}
		if _, err := io.ReadFull(c, buf[:5]); err != nil {
			c.Close()
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		if string(buf[:5]) != "pong\n" {
			// Something else answered there (a proxy on the way): not the server.
			c.Close()
			return fmt.Errorf("round trip %d: %s answered %q, not nettool's pong", i, addr, buf[:5])
		}
		c.Close()
		ds = append(ds, time.Since(start))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) }
	fmt.Printf("%-34s n=%d min=%s median=%s mean=%s max=%s (ms)\n", label, n, ms(ds[0]), ms(ds[n/2]), ms(sum/time.Duration(n)), ms(ds[n-1]))
	return nil
}
