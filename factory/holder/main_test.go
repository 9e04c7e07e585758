package holder

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/hypervisor"
)

// The factory daemon's invocation reaches the holder's own binary whole: its command line
// is the binary and one argument that decodes to the same invocation.
func TestInvocationThroughItsCommandLine(t *testing.T) {
	inv := Invocation{
		Config: Config{ID: "vm3", Dir: "/r/@factory/pools/p/vm3", ShareDir: "/r/@factory/pools/p/vm3/share",
			CPUs: 2, MemoryMiB: 256, Parent: 77, Warm: true},
		Boot: Boot{Policy: `[{"cache":2}]`, TemplateDir: "/r/@templates", Base: hypervisor.Config{
			Kernel: "/k", Initrd: "/i", Machine: hypervisor.MachineQ35, Accel: "tcg", CPUs: 1, MemoryMiB: 128,
			MaxCPUs: 4, MaxMemoryMiB: 2048, KernelParams: []string{"quiet"}}},
		ReadyFD: 3, Debug: true,
	}
	cmd := inv.Command("/usr/local/bin/runv-holder")
	if cmd.Path != "/usr/local/bin/runv-holder" || len(cmd.Args) != 2 {
		t.Fatalf("command line %q, want the binary and one argument", cmd.Args)
	}
	var got Invocation
	if err := json.Unmarshal([]byte(cmd.Args[1]), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, inv) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, inv)
	}
}

// A holder binary started wrongly says why, on its ready descriptor when it has one (the
// factory daemon reports that line), and fails.
func TestHolderBinaryReportsABadStart(t *testing.T) {
	if err := MainBinary(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "want one argument") {
		t.Errorf("no argument: %v", err)
	}
	if err := MainBinary(context.Background(), []string{"{"}); err == nil || !strings.Contains(err.Error(), "invocation") {
		t.Errorf("an argument that is not JSON: %v", err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fd, err := unix.Dup(int(w.Fd())) // the holder takes its ready descriptor over
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	arg, _ := json.Marshal(Invocation{Boot: Boot{Policy: "not a policy"}, ReadyFD: fd})
	if err := MainBinary(context.Background(), []string{string(arg)}); err == nil {
		t.Error("an invalid policy: no error")
	}
	report, _ := io.ReadAll(r)
	if !strings.HasPrefix(string(report), "error: holder: ") {
		t.Errorf("ready descriptor got %q, want the error", report)
	}
}
