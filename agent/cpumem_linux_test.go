package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOnlineAll(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "cpu0"), 0o755) // the boot CPU has no online file
	write("cpu1/online", "1\n")
	write("cpu2/online", "0\n")
	write("cpufreq/x", "")       // not a CPU
	write("cpuidle/online", "0") // not a CPU either
	n, err := onlineAll(dir, "cpu", "1", "0")
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d CPUs online, want 3", n)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cpu2/online"))
	if strings.TrimSpace(string(b)) != "1" {
		t.Errorf("cpu2 not onlined: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cpuidle/online")); string(b) != "0" {
		t.Errorf("a non-CPU entry was written: %q", b)
	}
}
