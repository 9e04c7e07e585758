// Command nettool measures a pod's network for bench/run.sh: a server that runs in the
// container (runv's or runc's, same bundle, same kind of namespace) and a client on the
// host.
//
//	nettool serve [-listen :5001]
//	    per connection, the first line is a command: "sink" reads until EOF and answers the
//	    byte count; "source SECS" writes for SECS seconds, then closes; "ping" answers "pong"
//	    and closes.
//	nettool send -addr IP:PORT [-secs 10]      host → pod: one stream for SECS seconds
//	nettool recv -addr IP:PORT [-secs 10]      pod → host: one stream for SECS seconds
//	nettool rr -addr IP:PORT [-n 200]          connect + request + answer + close, N times
//
// Throughput lines read "LABEL mbit_s=… bytes=… secs=…" (the receiver's count over the
// sender's time, up to the receiver's acknowledgement); round trips read like benchtool's
// timing lines: "LABEL n=… min=… median=… mean=… max=… (ms)".
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

const chunk = 128 << 10

func main() {
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
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(*listen)
	case "send":
		err = send(*addr, *secs, *label)
	case "recv":
		err = recv(*addr, *secs, *label)
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

func serve(listen string) error {
	l, err := net.Listen("tcp", listen)
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

func dial(addr string) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, 10*time.Second)
}

func throughput(label string, bytes int64, d time.Duration) {
	fmt.Printf("%-34s mbit_s=%.0f bytes=%d secs=%.2f\n", label, float64(bytes)*8/d.Seconds()/1e6, bytes, d.Seconds())
}

func send(addr string, secs int, label string) error {
	c, err := dial(addr)
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

func recv(addr string, secs int, label string) error {
	c, err := dial(addr)
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
		c, err := dial(addr)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			c.Close()
			return err
		}
		if _, err := io.ReadAtLeast(c, buf, 5); err != nil {
			c.Close()
			return fmt.Errorf("round trip %d: %w", i, err)
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
