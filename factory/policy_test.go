package factory

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		in      string
		want    []Policy
		wantErr string
	}{
		{in: `[{"template":true,"cache":2,"cpu":1,"memory":128}]`, want: []Policy{{Template: true, Cache: 2, CPU: 1, Memory: 128}}},
		{in: ` {"template":true} `, want: []Policy{{Template: true}}},
		{in: `[]`, want: []Policy{}},
		{in: `[{"cache":2}]`, want: []Policy{{Template: true, Cache: 2}}},
		{in: `[{"template":false,"cache":2}]`, want: []Policy{{Cache: 2}}},
		{in: `[{"memory":256}]`, want: []Policy{{Memory: 256}}},
		{in: `[{"template":true,"name":"small","memory":256},{"cpu":2,"memory":512}]`,
			want: []Policy{{Template: true, Name: "small", Memory: 256}, {CPU: 2, Memory: 512}}},
		{in: `[{"templat":true}]`, wantErr: "unknown field"},
		{in: `[{"cpu":-1}]`, wantErr: "negative"},
		{in: `[{"name":"x"}]`, wantErr: "without \"template\":true"},
		{in: `[{"template":true,"name":"../x"}]`, wantErr: "template name"},
		{in: `[{"cpu":1},{"cpu":1}]`, wantErr: "a second entry"},
		{in: `[{}] [{}]`, wantErr: "trailing"},
		{in: `template`, wantErr: "expected e.g."},
	}
	for _, tt := range tests {
		got, err := ParsePolicy([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%s: error %v, want one containing %q (invalid argument)", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseSetting(t *testing.T) {
	file := filepath.Join(t.TempDir(), "factory.json")
	if err := os.WriteFile(file, []byte(`[{"template":true,"cpu":1,"memory":128}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		setting string
		want    []Policy
		wantErr bool
	}{
		{setting: "direct", want: nil},
		{setting: "template", want: []Policy{{Template: true}}},
		{setting: `[{"template":true,"memory":256}]`, want: []Policy{{Template: true, Memory: 256}}},
		{setting: file, want: []Policy{{Template: true, CPU: 1, Memory: 128}}},
		{setting: "/nonexistent/factory.json", wantErr: true},
		{setting: "tmplate", wantErr: true},
	} {
		got, source, err := ParseSetting(tt.setting)
		if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: %+v (from %s), %v; want %+v, error %v", tt.setting, got, source, err, tt.want, tt.wantErr)
		}
	}
}

// namedFactory records the requests it gets.
type namedFactory struct {
	name string
	got  *[]string
}

func (n namedFactory) GetVM(_ context.Context, req Request) (hypervisor.VM, error) {
	*n.got = append(*n.got, n.name)
	return nil, nil
}
func (n namedFactory) Name() string { return n.name }
func (n namedFactory) Close() error { return nil }

func TestBySize(t *testing.T) {
	var got []string
	b := &bySize{
		entries: []sized{
			{cpus: 1, memoryMiB: 128, f: namedFactory{"small", &got}},
			{cpus: 2, memoryMiB: 512, f: namedFactory{"big", &got}},
		},
		fallback: namedFactory{"direct", &got},
	}
	for _, req := range []Request{
		{},                            // default: the first entry
		{CPUs: 2, MemoryMiB: 512},     // exact
		{MemoryMiB: 128},              // cpus default to the first entry's: small
		{CPUs: 2},                     // 2 vCPUs with the default 128 MiB: no entry
		{CPUs: 4, MemoryMiB: 4096},    // no entry
		{CPUs: 1, MemoryMiB: 128 + 0}, // exact
	} {
		b.GetVM(context.Background(), req)
	}
	want := []string{"small", "big", "small", "direct", "direct", "small"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("routed to %q, want %q", got, want)
	}
}

// EntryFor names the entry New's factory routes a request to, as bySize does.
func TestEntryFor(t *testing.T) {
	base := hypervisor.Config{CPUs: 1, MemoryMiB: 128}
	two := []Policy{{Cache: 2}, {CPU: 2, Memory: 512}}
	for _, tt := range []struct {
		name      string
		policy    []Policy
		cpus, mem int
		want      int
	}{
		{"no policy: direct", nil, 1, 128, -1},
		{"one entry takes every size", []Policy{{Cache: 2}}, 4, 4096, 0},
		{"default size: the first entry", two, 0, 0, 0},
		{"the first entry's size", two, 1, 128, 0},
		{"the second entry's size", two, 2, 512, 1},
		{"cpus default to the first entry's", two, 0, 128, 0},
		{"no entry of that size: direct", two, 2, 0, -1},
	} {
		if got := EntryFor(tt.policy, base, tt.cpus, tt.mem); got != tt.want {
			t.Errorf("%s: EntryFor(%d, %d) = %d, want %d", tt.name, tt.cpus, tt.mem, got, tt.want)
		}
	}
}

func TestNewFromPolicy(t *testing.T) {
	l := &fakeLauncher{}
	ctx := context.Background()
	f, err := New(ctx, Options{Launcher: l}, nil)
	if err != nil || f.Name() != KindDirect {
		t.Fatalf("empty policy: %v, %v", f, err)
	}
	// The fake launcher cannot snapshot.
	if _, err := New(ctx, Options{Launcher: l}, []Policy{{Template: true}}); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("template with a launcher that cannot snapshot: %v", err)
	}
	tl := &fakeTemplater{}
	f, err = New(ctx, Options{Launcher: tl, TemplateDir: t.TempDir()}, []Policy{{Template: true, Cache: 2, Memory: 256}})
	if err != nil || f.Name() != KindTemplate {
		t.Fatalf("template policy: %v, %v", f, err)
	}
	if tf := f.(*Template); tf.base.MemoryMiB != 256 || tf.templateName() != "microvm-1c-256m" {
		t.Errorf("template factory for %d MiB named %s", tf.base.MemoryMiB, tf.templateName())
	}
	// The cache constructor gets the entry's factory.
	var wrapped Factory
	cache := func(_ context.Context, base Factory, p Policy) (Factory, error) {
		wrapped = base
		return base, nil
	}
	if _, err := New(ctx, Options{Launcher: tl, TemplateDir: t.TempDir(), Cache: cache}, []Policy{{Template: true, Cache: 2}}); err != nil || wrapped == nil || wrapped.Name() != KindTemplate {
		t.Errorf("cache hook: wrapped %v, %v", wrapped, err)
	}
}

// fakeTemplater is a launcher that claims to snapshot.
type fakeTemplater struct{ fakeLauncher }

func (*fakeTemplater) CreateTemplate(context.Context, hypervisor.Config, hypervisor.Snapshot, hypervisor.ParkFunc) (hypervisor.Snapshot, error) {
	return hypervisor.Snapshot{}, errors.New("fake")
}

func (*fakeTemplater) Clone(context.Context, hypervisor.Config, hypervisor.Snapshot) (hypervisor.VM, error) {
	return nil, errors.New("fake")
}
