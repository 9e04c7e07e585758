package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/errdefs"
)

var listCommand = &cli.Command{
	Name:  "list",
	Usage: "list the containers under --root",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "table", Usage: "table or json"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the container ids"},
	},
	Action: func(c *cli.Context) error {
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		format := c.String("format")
		if format != "table" && format != "json" {
			return fmt.Errorf("--format %q: use table or json: %w", format, errdefs.ErrInvalidArgument)
		}
		ids, err := g.store.List()
		if err != nil {
			return err
		}
		var states []ociState
		// Containers that cannot be read or whose daemons do not answer are reported
		// after the others, rather than guessed at or left out silently.
		var failed []error
		for _, id := range ids {
			rec, err := loadRecord(g.store, id)
			if errors.Is(err, errdefs.ErrNotFound) {
				continue // deleted meanwhile
			}
			if err == nil {
				var st ociState
				if st, err = liveState(rec); err == nil {
					states = append(states, st)
					continue
				}
			}
			failed = append(failed, err)
		}
		if err := printStates(states, format, c.Bool("quiet")); err != nil {
			return err
		}
		sweepOrphanPods(c.Context, g)
		return errors.Join(failed...)
	},
}

// printStates prints the list: ids only (quiet), runc's JSON, or runc's table.
func printStates(states []ociState, format string, quiet bool) error {
	if quiet {
		for _, s := range states {
			fmt.Println(s.ID)
		}
		return nil
	}
	if format == "json" {
		if states == nil {
			states = []ociState{}
		}
		return json.NewEncoder(os.Stdout).Encode(states)
	}
	w := tabwriter.NewWriter(os.Stdout, 12, 1, 3, ' ', 0)
	fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
	for _, s := range states {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Pid, s.Status, s.Bundle, s.Created.Format(time.RFC3339Nano), "root")
	}
	return w.Flush()
}
