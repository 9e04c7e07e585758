package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/shim"
	"github.com/runv-project/runv/internal/state"
)

func TestCheckTerminal(t *testing.T) {
	tests := []struct {
		name             string
		terminal, detach bool
		socket           string
		wantErr          string
	}{
		{"foreground terminal", true, false, "", ""},
		{"foreground pipes", false, false, "", ""},
		{"detached pipes", false, true, "", ""},
		{"detached terminal with socket", true, true, "/s", ""},
		{"detached terminal without socket", true, true, "", "cannot allocate tty"},
		{"foreground terminal with socket", true, false, "/s", "cannot use console socket"},
		{"detached pipes with socket", false, true, "/s", "cannot use console socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkTerminal(tt.terminal, tt.detach, tt.socket)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v, want %q of class invalid argument", err, tt.wantErr)
			}
		})
	}
}

func TestStateErrorsAreFailedPreconditions(t *testing.T) {
	for _, err := range []error{errNotPaused, errStartRunning, errStartStopped, errExecStopped, errExecPaused, errStartInState("paused")} {
		wrapped := errors.Join(errors.New("context"), err)
		if !errors.Is(wrapped, errdefs.ErrFailedPrecondition) {
			t.Errorf("%q is not of class failed precondition", err)
		}
	}
}

func TestHostPtyIsRawAndSized(t *testing.T) {
	p, err := newHostPty()
	if err != nil {
		t.Skipf("no ptys here: %v", err)
	}
	defer p.master.Close()
	defer p.slave.Close()
	if err := setWinsize(p.master, 30, 100); err != nil {
		t.Fatal(err)
	}
	if rows, cols, err := shim.Winsize(p.slave); err != nil || rows != 30 || cols != 100 {
		t.Fatalf("slave size %dx%d (%v), want 30x100 as set on the master", rows, cols, err)
	}
	// Raw: what is written to the master arrives unchanged (no echo, no CR/NL mapping).
	if _, err := p.master.Write([]byte("a\rb\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	p.slave.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.slave.Read(buf)
	if err != nil || string(buf[:n]) != "a\rb\n" {
		t.Fatalf("slave read %q (%v), want the bytes unchanged", buf[:n], err)
	}
}

func TestRunHook(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	one := 1
	tests := []struct {
		name    string
		hook    specs.Hook
		wantErr string
		want    string // content of out
	}{
		{"state on stdin, args, env", specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", `read s; echo "$V $0 $s" > "$1"`, "a0", out}, Env: []string{"V=v"}}, "", `v a0 {"ociVersion":"1.3.0","id":"c1","status":"creating","pid":42,"bundle":"/b"}`},
		{"failure carries output", specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", "echo oops >&2; exit 3"}}, "exit status 3, stdout: , stderr: oops", ""},
		{"timeout", specs.Hook{Path: "/bin/sleep", Args: []string{"sleep", "10"}, Timeout: &one}, "hook ran past specified timeout of 1s", ""},
		{"missing binary", specs.Hook{Path: "/nonexistent/hook"}, "no such file", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(out)
			st := specs.State{Version: "1.3.0", ID: "c1", Status: "creating", Pid: 42, Bundle: "/b"}
			start := time.Now()
			err := runHooks(context.Background(), hookPrestart, []specs.Hook{tt.hook}, st)
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %s", time.Since(start))
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "prestart hook #0") {
					t.Fatalf("error %v, want one naming the hook and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(out)
			if got := strings.TrimSpace(string(b)); got != tt.want {
				t.Fatalf("hook wrote %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHookState(t *testing.T) {
	rec := &state.Container{ID: "c1", Bundle: "/b", Annotations: map[string]string{"k": "v"}, Shim: state.Process{Pid: 7}, Spec: &specs.Spec{Version: "1.0.2"}}
	if st := hookState(rec, state.StatusRunning); st.Pid != 7 || st.Status != "running" || st.Version != "1.0.2" || st.Annotations["k"] != "v" {
		t.Fatalf("running state %+v", st)
	}
	if st := hookState(rec, state.StatusStopped); st.Pid != 0 {
		t.Fatalf("a stopped container has no pid: %+v", st)
	}
}

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }

func TestMergeResources(t *testing.T) {
	cur := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
		Memory:  &specs.LinuxMemory{Limit: i64(100), Reservation: i64(50)},
		CPU:     &specs.LinuxCPU{Quota: i64(1000), Period: u64(10000), Cpus: "0"},
	}
	tests := []struct {
		name string
		upd  *specs.LinuxResources
		want string // JSON of the merged resources
	}{
		{"memory limit only keeps the reservation and the cpu", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(200)}},
			`{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":200,"reservation":50},"cpu":{"quota":1000,"period":10000,"cpus":"0"}}`},
		{"quota only keeps the period", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(5000)}},
			`{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":100,"reservation":50},"cpu":{"quota":5000,"period":10000,"cpus":"0"}}`},
		{"unlimited memory lifts swap too", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}},
			`{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":-1,"reservation":50,"swap":-1},"cpu":{"quota":1000,"period":10000,"cpus":"0"}}`},
		{"pids and unified added", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(20)}, Unified: map[string]string{"memory.high": "1"}},
			`{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":100,"reservation":50},"cpu":{"quota":1000,"period":10000,"cpus":"0"},"pids":{"limit":20},"unified":{"memory.high":"1"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := json.Marshal(cur)
			got, _ := json.Marshal(mergeResources(cur, tt.upd))
			if string(got) != tt.want {
				t.Fatalf("merged\n %s\nwant\n %s", got, tt.want)
			}
			if after, _ := json.Marshal(cur); string(after) != string(before) {
				t.Fatalf("mergeResources modified its input: %s", after)
			}
		})
	}
}

// parse runs a command's flag parsing over args and returns its context.
func parse(t *testing.T, cmd *cli.Command, args ...string) *cli.Context {
	t.Helper()
	var got *cli.Context
	c := *cmd
	c.Action = func(ctx *cli.Context) error { got = ctx; return nil }
	app := &cli.App{Name: "runv", Commands: []*cli.Command{&c}, DisableSliceFlagSeparator: true, ExitErrHandler: func(*cli.Context, error) {}}
	if err := app.Run(append([]string{"runv", cmd.Name}, args...)); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return got
}

func TestResourcesFromFlags(t *testing.T) {
	c := parse(t, updateCommand, "--memory", "64m", "--memory-swap", "-1", "--cpu-quota", "50000", "--cpu-share", "512", "--pids-limit", "0", "--cpuset-cpus", "0-1", "x")
	r, err := resourcesFromFlags(c)
	if err != nil {
		t.Fatal(err)
	}
	if *r.Memory.Limit != 64<<20 || *r.Memory.Swap != -1 || *r.CPU.Quota != 50000 || *r.CPU.Shares != 512 || r.CPU.Cpus != "0-1" || *r.Pids.Limit != 0 {
		b, _ := json.Marshal(r)
		t.Fatalf("resources %s", b)
	}
	if r.CPU.Period != nil || r.Memory.Reservation != nil {
		t.Fatal("flags not given must stay unset")
	}
	for _, bad := range [][]string{{"--memory", "lots", "x"}, {"--cpu-quota", "1.5", "x"}, {"--blkio-weight", "5", "x"}} {
		if _, err := resourcesFromFlags(parse(t, updateCommand, bad...)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("update %v: error %v, want invalid argument", bad, err)
		}
	}
}

func TestExecSpec(t *testing.T) {
	rec := &state.Container{ID: "c1", Spec: &specs.Spec{Process: &specs.Process{
		Terminal: true, Args: []string{"init"}, Env: []string{"PATH=/bin"}, Cwd: "/",
		Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}},
	}}}
	c := parse(t, execCommand, "-e", "A=1,2", "--env", "B=3", "--cwd", "/tmp", "-u", "10:20", "-g", "5", "--additional-gids", "6", "--cap", "sys_admin", "--no-new-privs", "c1", "sh", "-c", "x")
	p, err := execSpec(c, rec)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"user":{"uid":10,"gid":20,"additionalGids":[6,5]},"args":["sh","-c","x"],"env":["PATH=/bin","B=3","A=1,2"],"cwd":"/tmp","capabilities":{"bounding":["CAP_KILL","CAP_SYS_ADMIN"],"effective":["CAP_SYS_ADMIN"],"permitted":["CAP_SYS_ADMIN"]},"noNewPrivileges":true}`
	if b, _ := json.Marshal(p); string(b) != want {
		t.Fatalf("exec process\n %s\nwant\n %s", b, want)
	}
	if rec.Spec.Process.Args[0] != "init" || len(rec.Spec.Process.Env) != 1 {
		t.Fatal("execSpec modified the container's recorded process")
	}
	for _, bad := range [][]string{{"c1"}, {"-u", "root", "c1", "sh"}, {"--cwd", "rel", "c1", "sh"}, {"--apparmor", "p", "c1", "sh"}} {
		if _, err := execSpec(parse(t, execCommand, bad...), rec); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("exec %v: error %v, want invalid argument", bad, err)
		}
	}
}

// A container may be called "h" or "help" (runc accepts both): urfave/cli's help subcommand
// must not take them, while --help still prints a command's help.
func TestContainerNamedLikeHelp(t *testing.T) {
	root := t.TempDir()
	for _, args := range [][]string{{"state", "h"}, {"state", "help"}, {"delete", "h"}, {"kill", "help", "KILL"}, {"exec", "h", "true"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			app := newApp()
			app.Writer, app.ErrWriter = io.Discard, io.Discard
			err := app.Run(append([]string{"runv", "--root", root}, args...))
			// exec reports its failure as runc does, with exit status 255 (after the message).
			if !errors.Is(err, errdefs.ErrNotFound) && err != (exitError{execFailedCode}) {
				t.Fatalf("runv %v: error %v, want container %q not found", args, err, args[1])
			}
		})
	}
	var out strings.Builder
	app := newApp()
	app.Writer = &out
	if err := app.Run([]string{"runv", "state", "--help"}); err != nil || !strings.Contains(out.String(), "runv state") {
		t.Fatalf("runv state --help: %v, output %q", err, out.String())
	}
}
