package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
)

// psCommand lists a container's processes.
//
// --format json prints what runc prints, a JSON array of pids a client can signal (docker
// top and containerd's ListPids read it): here the host pids of the processes standing in
// for the container's processes, the init's shim and one per exec'd process. The processes
// themselves run in the VM; their guest pids mean nothing on the host.
//
// --format table (the default) shows the processes in the VM, as the guest kernel numbers
// them, with their command lines. runc runs the host's ps(1) for this, which cannot see into
// the VM, so ps options are not supported.
var psCommand = &cli.Command{
	Name:      "ps",
	Usage:     "list the processes of a container",
	ArgsUsage: "<container-id>",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "table", Usage: "table (processes in the VM) or json (host pids of their stand-ins)"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() < 1 {
			return usageError("ps", "[--format table|json] <container-id>", "ps needs a container id")
		}
		id := c.Args().First()
		format := c.String("format")
		if format != "table" && format != "json" {
			return fmt.Errorf("invalid format option %q: use table or json: %w", format, errdefs.ErrInvalidArgument)
		}
		if format == "table" && c.NArg() > 1 {
			return fmt.Errorf("ps options %q are not supported: the processes run in the container's VM, where the host's ps cannot see them: %w", c.Args().Slice()[1:], errdefs.ErrNotImplemented)
		}
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		rec, err := loadRecord(g.store, id)
		if err != nil {
			return err
		}
		if format == "json" {
			pids := []int{}
			for _, p := range append([]state.Process{rec.Shim}, execProcesses(rec)...) {
				if p.Alive() {
					pids = append(pids, p.Pid)
				}
			}
			return json.NewEncoder(os.Stdout).Encode(pids)
		}
		w := tabwriter.NewWriter(os.Stdout, 5, 1, 2, ' ', 0)
		fmt.Fprintln(w, "PID\tCMD")
		live, err := liveState(rec)
		if err != nil {
			return err
		}
		if live.Status == state.StatusStopped {
			return w.Flush() // nothing runs
		}
		pod, err := dialLive(rec)
		if err != nil {
			return w.Flush()
		}
		defer pod.Close()
		ctx, cancel := ctxTimeout(30 * time.Second)
		defer cancel()
		resp, err := pod.api.Processes(ctx, &podapi.ContainerRequest{Id: id})
		if err != nil {
			return fmt.Errorf("list the processes of container %q: %w", id, rpcErr(err))
		}
		for _, p := range resp.Processes {
			cmd := p.Cmd
			if cmd == "" {
				cmd = "?"
			}
			fmt.Fprintf(w, "%d\t%s\n", p.GuestPid, cmd)
		}
		return w.Flush()
	},
}
