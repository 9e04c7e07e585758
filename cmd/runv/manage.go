package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
)

// manageCommand groups the host-wide management commands (runV's `runv manage`): VM
// templates for the template factory.
var manageCommand = &cli.Command{
	Name:  "manage",
	Usage: "manage VM templates (the template factory: --factory template)",
	Subcommands: []*cli.Command{
		{
			Name:  "create-template",
			Usage: "boot a template VM and save it; pods then start as clones of it (replaces an existing template of that name)",
			Description: "The template's size and machine default to what pods get: the first template entry of the factory policy,\n" +
				"else --default_cpus, --default_memory and --machine. Kernel and initrd are --kernel and --initrd.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name", Usage: "template name (default: machine and size, e.g. microvm-1c-128m)"},
				&cli.IntFlag{Name: "cpus", Usage: "vCPUs of the template and its clones"},
				&cli.IntFlag{Name: "memory", Usage: "memory of the template and its clones, in MiB"},
				&cli.StringFlag{Name: "machine", Usage: "QEMU machine type: microvm or q35"},
			},
			Action: createTemplate,
		},
		{
			Name:  "remove-template",
			Usage: "remove a VM template; running clones are not affected",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name", Usage: "template name (default: the template create-template would make)"},
				&cli.BoolFlag{Name: "all", Usage: "remove every template and the tmpfs runv mounted for them"},
			},
			Action: removeTemplate,
		},
		{
			Name:  "list-templates",
			Usage: "list VM templates and whether pods can use them",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "table", Usage: "table or json"},
			},
			Action: listTemplates,
		},
		factoryDaemonCommand, // factory_daemon.go: the cache kind's pools
	},
}

// templateTarget is the configuration and name of the template a manage command is about.
func templateTarget(c *cli.Context, g *globals) (hypervisor.Config, string, error) {
	policy, _, err := factory.ParseSetting(g.factory)
	if err != nil {
		return hypervisor.Config{}, "", err
	}
	cfg := g.vmConfig()
	name := ""
	for _, p := range policy {
		if !p.Template {
			continue
		}
		if p.CPU > 0 {
			cfg.CPUs = p.CPU
		}
		if p.Memory > 0 {
			cfg.MemoryMiB = p.Memory
		}
		name = p.Name
		break
	}
	if c.IsSet("cpus") || c.IsSet("memory") {
		// Another size than the policy's is another template.
		name = ""
	}
	if c.IsSet("cpus") {
		cfg.CPUs = c.Int("cpus")
	}
	if c.IsSet("memory") {
		cfg.MemoryMiB = c.Int("memory")
	}
	if c.IsSet("machine") {
		cfg.Machine = c.String("machine")
	}
	switch cfg.Machine {
	case hypervisor.MachineMicroVM, hypervisor.MachineQ35:
	default:
		return cfg, "", fmt.Errorf("--machine %q: use microvm or q35: %w", cfg.Machine, errdefs.ErrInvalidArgument)
	}
	if cfg.CPUs < 1 || cfg.CPUs > 64 {
		return cfg, "", fmt.Errorf("--cpus %d: between 1 and 64: %w", cfg.CPUs, errdefs.ErrInvalidArgument)
	}
	if cfg.MemoryMiB < 64 {
		return cfg, "", fmt.Errorf("--memory %d MiB: at least 64 MiB: %w", cfg.MemoryMiB, errdefs.ErrInvalidArgument)
	}
	if c.IsSet("name") {
		name = c.String("name")
	}
	if name == "" {
		name = factory.TemplateName(cfg)
	}
	return cfg, name, factory.ValidateTemplateName(name)
}

// manageGlobals reads the global options of a manage subcommand. Its own --machine would
// shadow the global one (the template's machine may differ from the pods' default), so they
// are read from the parent context.
func manageGlobals(c *cli.Context) (*globals, error) {
	if l := c.Lineage(); len(l) > 1 {
		return globalsFrom(l[1])
	}
	return globalsFrom(c)
}

func createTemplate(c *cli.Context) error {
	g, err := manageGlobals(c)
	if err != nil {
		return err
	}
	if err := g.checkBootFiles(); err != nil {
		return err
	}
	cfg, name, err := templateTarget(c, g)
	if err != nil {
		return err
	}
	info, err := factory.CreateTemplate(c.Context, &qemu.Launcher{}, cfg, factory.CreateOptions{
		Dir: g.templateDir(), Name: name,
		Progress: func(msg string, args ...any) {
			var kv []string
			for i := 0; i+1 < len(args); i += 2 {
				kv = append(kv, fmt.Sprintf("%v=%v", args[i], args[i+1]))
			}
			fmt.Fprintf(os.Stderr, "runv: template %s: %s %s\n", name, msg, strings.Join(kv, " "))
		},
	})
	if err != nil {
		return err
	}
	fmt.Printf("created template %s in %s (%s, %d vCPU, %d MiB; boot %s; RAM file %.1f MiB, state %d KiB)\n",
		info.Name, g.templateDir(), info.MachineType, info.CPUs, info.MemoryMiB,
		time.Duration(info.BootMillis)*time.Millisecond, float64(info.MemoryAllocated)/(1<<20), info.StateBytes>>10)
	return nil
}

func removeTemplate(c *cli.Context) error {
	g, err := manageGlobals(c)
	if err != nil {
		return err
	}
	if c.Bool("all") {
		if c.IsSet("name") {
			return fmt.Errorf("--all and --name exclude each other: %w", errdefs.ErrInvalidArgument)
		}
		names, err := factory.RemoveAllTemplates(c.Context, g.templateDir())
		for _, n := range names {
			fmt.Printf("removed template %s\n", n)
		}
		return err
	}
	_, name, err := templateTarget(c, g)
	if err != nil {
		return err
	}
	if err := factory.RemoveTemplate(c.Context, g.templateDir(), name); err != nil {
		return err
	}
	fmt.Printf("removed template %s\n", name)
	return nil
}

func listTemplates(c *cli.Context) error {
	g, err := manageGlobals(c)
	if err != nil {
		return err
	}
	list, err := factory.StatTemplates(g.templateDir(), hypervisor.Config{
		Kernel: g.kernel, Initrd: g.initrd, Accel: g.accel, QEMU: g.qemu,
	})
	if err != nil {
		return err
	}
	switch c.String("format") {
	case "json":
		type entry struct {
			*factory.TemplateInfo
			Usable bool   `json:"usable"`
			Stale  string `json:"stale,omitempty"`
		}
		out := make([]entry, 0, len(list))
		for _, t := range list {
			out = append(out, entry{TemplateInfo: t.Info, Usable: t.Stale == "", Stale: t.Stale})
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	case "table":
		w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tMACHINE\tCPUS\tMEMORY\tRAM FILE\tSTATE\tTRANSLATIONS\tCREATED\tSTATUS")
		for _, t := range list {
			status := "ok"
			if t.Stale != "" {
				status = "refused: " + t.Stale
			}
			i := t.Info
			translations := "-" // KVM, several vCPUs, or a QEMU without them
			if i.TranslationsBytes > 0 {
				translations = fmt.Sprintf("%.1f MiB", float64(i.TranslationsBytes)/(1<<20))
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%d MiB\t%.1f MiB\t%d KiB\t%s\t%s\t%s\n", i.Name, i.MachineType, i.CPUs, i.MemoryMiB,
				float64(i.MemoryAllocated)/(1<<20), i.StateBytes>>10, translations, i.Created.Local().Format(time.DateTime), status)
		}
		return w.Flush()
	default:
		return fmt.Errorf("--format %q: use table or json: %w", c.String("format"), errdefs.ErrInvalidArgument)
	}
}
