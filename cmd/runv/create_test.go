package main

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/internal/state"
)

// A foreground run's container starts with its Create only when nothing of runv's has to
// happen between the two: a hook of create or start time, a network namespace to mirror
// or a terminal to attach keeps them two calls.
func TestStartsWithCreate(t *testing.T) {
	hook := []specs.Hook{{Path: "/bin/true"}}
	for _, tt := range []struct {
		name string
		spec specs.Spec
		term bool
		fold bool
	}{
		{name: "no hooks, new network namespace", fold: true},
		{name: "poststart and poststop hooks only", spec: specs.Spec{Hooks: &specs.Hooks{Poststart: hook, Poststop: hook}}, fold: true},
		{name: "prestart hook", spec: specs.Spec{Hooks: &specs.Hooks{Prestart: hook}}}, //nolint:staticcheck // docker still uses it
		{name: "createRuntime hook", spec: specs.Spec{Hooks: &specs.Hooks{CreateRuntime: hook}}},
		{name: "createContainer hook", spec: specs.Spec{Hooks: &specs.Hooks{CreateContainer: hook}}},
		{name: "startContainer hook", spec: specs.Spec{Hooks: &specs.Hooks{StartContainer: hook}}},
		{name: "a network namespace to mirror", spec: specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}}}}},
		{name: "a terminal", term: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &state.Container{ID: "c", Sandbox: true, Spec: &tt.spec, Shim: state.Self()}
			var term *procTerminal
			if tt.term {
				term = &procTerminal{}
			}
			if got := startsWithCreate(rec, term); got != tt.fold {
				t.Errorf("startsWithCreate = %v, want %v", got, tt.fold)
			}
		})
	}
}
