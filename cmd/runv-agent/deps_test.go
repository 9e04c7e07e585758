package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent runs in the guest, which runv does not trust: it must not link any host-side
// package of runv (the pod daemon, the factory, the hypervisor driver, the agent client...).
// Only these packages of the module may be in its build.
var guestPackages = map[string]bool{
	"cmd/runv-agent": true,
	"agent":          true,
	"api/agentproto": true,
	"api/ocispec":    true,
	"api/convert":    true,
}

func TestAgentLinksNoHostPackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "seccomp netgo osusergo",
		"-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	module, err := exec.Command("go", "list", "-m").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	prefix := strings.TrimSpace(string(module)) + "/"
	var own int
	for _, pkg := range strings.Fields(string(out)) {
		rel, ours := strings.CutPrefix(pkg, prefix)
		if !ours {
			continue
		}
		own++
		if !guestPackages[rel] {
			t.Errorf("the guest agent links host package %s; move what it needs into a guest or api package", pkg)
		}
	}
	if own < len(guestPackages) {
		t.Fatalf("go list found %d of runv's packages in the agent's build, expected at least %d: %s", own, len(guestPackages), out)
	}
}
