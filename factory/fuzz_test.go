package factory

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runv-project/runv/errdefs"
)

// FuzzParsePolicy parses arbitrary --factory values and factory.json files. A policy is
// accepted only when every entry is usable (no negative sizes, no duplicate size, a valid
// template name); anything else is refused as invalid input with an example of the format.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{`[{"template":true,"cache":2,"cpu":1,"memory":128}]`, `{"template":true}`,
		`[{"cache":-1}]`, `[{"name":"../x","template":true}]`, `[{"cpu":1},{"cpu":1}]`, `[{"templat":true}]`,
		`[] []`, `[{"memory":1e30}]`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("policy refused without the invalid-argument class: %v", err)
			}
			return
		}
		seen := map[[2]int]bool{}
		for i, e := range p {
			if e.CPU < 0 || e.Memory < 0 || e.Cache < 0 {
				t.Fatalf("entry %d accepted with a negative size: %+v", i, e)
			}
			if e.Name != "" && (ValidateTemplateName(e.Name) != nil || !e.Template) {
				t.Fatalf("entry %d accepted with an unusable name: %+v", i, e)
			}
			if seen[[2]int{e.CPU, e.Memory}] {
				t.Fatalf("entry %d accepted twice for one size: %+v", i, p)
			}
			seen[[2]int{e.CPU, e.Memory}] = true
		}
		// What was accepted means the same when written back.
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParsePolicy(again); err != nil {
			t.Fatalf("accepted policy %s does not parse once re-encoded: %v", again, err)
		}
	})
}

// FuzzReadTemplate reads an arbitrary template.json (a crash or a full tmpfs may leave
// anything): ReadTemplate returns the info or says the file is corrupt and how to remove it.
func FuzzReadTemplate(f *testing.F) {
	f.Add([]byte(`{"name":"t1","kernel":{"path":"/k","size":1},"cpus":1,"memoryMiB":128,"machineType":"microvm"}`))
	f.Add([]byte(`{"cpus":"one"}`))
	f.Add([]byte(`{"created":"yesterday"}`))
	f.Add([]byte{})
	dir := f.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "t1"), 0o700); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, "t1", templateInfo), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadTemplate(dir, "t1"); err != nil {
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "remove-template") {
				t.Fatalf("corrupt template info without its class or remedy: %v", err)
			}
		}
	})
}
