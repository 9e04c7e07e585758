package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/internal/fdpass"
)

// podrtt times the host-side round trips a CLI call makes to a running pod daemon, the
// floors beside runv exec's hops (docs/performance.md, "runv exec end to end"): a dial and
// its first call, a call on an open connection (Info: the daemon answers from memory,
// nothing goes to the guest), and a descriptor hand-over on stdio.sock. Each parked
// descriptor is claimed again (untimed) by a WatchStandIn that names no container, so the
// daemon keeps nothing.
func podrtt(args []string) error {
	fs := flag.NewFlagSet("podrtt", flag.ExitOnError)
	dir := fs.String("dir", "", "pod directory (<root>/@pods/<pod>)")
	n := fs.Int("n", 50, "rounds")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("podrtt: -dir names the pod directory")
	}
	ctx := context.Background()
	var dialCall, call, handOver []time.Duration
	for i := 0; i < *n; i++ {
		start := time.Now()
		conn, err := podapi.Dial(*dir)
		if err != nil {
			return err
		}
		c := podapi.NewPodClient(conn)
		if _, err := c.Info(ctx, &podapi.Empty{}); err != nil {
			conn.Close()
			return fmt.Errorf("Info: %w", err)
		}
		dialCall = append(dialCall, time.Since(start))
		start = time.Now()
		if _, err := c.Info(ctx, &podapi.Empty{}); err != nil {
			conn.Close()
			return fmt.Errorf("Info: %w", err)
		}
		call = append(call, time.Since(start))
		err = handOverOnce(ctx, c, *dir, &handOver, i)
		conn.Close()
		if err != nil {
			return err
		}
	}
	stats("dial + first call", dialCall)
	stats("call on an open connection", call)
	stats("descriptor hand-over (stdio.sock)", handOver)
	return nil
}

// handOverOnce times one hand-over of a pidfd of ours, then has the daemon take it back.
func handOverOnce(ctx context.Context, c podapi.PodClient, dir string, ds *[]time.Duration, i int) error {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	token := fmt.Sprintf("podrtt-%d-%d", os.Getpid(), i)
	start := time.Now()
	if err := fdpass.Send(filepath.Join(dir, podapi.StdioSocket), token, []*os.File{f}); err != nil {
		return err
	}
	*ds = append(*ds, time.Since(start))
	// Claimed and closed by the daemon; the call fails on the container, as it should.
	c.WatchStandIn(ctx, &podapi.StandInRequest{Id: "podrtt-no-such-container", Token: token})
	return nil
}
