package main

import "testing"

func TestKindNamesEachProcessOfAPod(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/bin/qemu-system-x86_64", "-name", "p-1"}, "qemu"},
		{[]string{"/usr/local/bin/runv-holder", `{"Config":{"ID":"vm1"}}`}, "holder"},
		{[]string{"/usr/local/bin/runv", "manage", "factory-daemon", "--hold", `{"Config":{"ID":"vm1"}}`}, "holder"},
		{[]string{"/usr/local/bin/runv", "--root", "/r", "manage", "factory-daemon"}, "factory"},
		{[]string{"/usr/local/bin/runv", "containerd", "--solo-namespaced"}, "daemon"},
		{[]string{"/usr/local/bin/runv", "shim", "--id", "c"}, "shim"},
		{[]string{"/usr/local/bin/runv", "run", "c"}, "other"},
		{nil, "other"},
	}
	for _, tt := range tests {
		if got := kind(tt.argv); got != tt.want {
			t.Errorf("kind(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}
