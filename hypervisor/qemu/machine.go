package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	"github.com/runv-project/runv/hypervisor"
)

// helpAnswers caches each QEMU binary's answers to the help queries runv asks of it.
var helpAnswers sync.Map // qemu path NUL args joined by NUL -> string

// qemuHelp runs `qemu args...` (a query such as `-machine help`, which prints and exits)
// once per binary and arguments, and returns its output.
func qemuHelp(ctx context.Context, qemu string, args ...string) (string, error) {
	key := qemu + "\x00" + strings.Join(args, "\x00")
	if v, ok := helpAnswers.Load(key); ok {
		return v.(string), nil
	}
	out, err := exec.CommandContext(ctx, qemu, args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", qemu, strings.Join(args, " "), err)
	}
	helpAnswers.Store(key, string(out))
	return string(out), nil
}

// resolveMachineType returns the versioned machine type that machine stands for in this
// QEMU ("q35" -> "pc-q35-7.2"). A template's device state is only valid for the machine
// version that wrote it, so templates record and clones use the versioned name; asking QEMU
// (rather than hard-coding a version) keeps this right across QEMU upgrades. microvm has no
// versions.
func resolveMachineType(ctx context.Context, qemu, machine string) (string, error) {
	if machine == hypervisor.MachineMicroVM {
		return machine, nil
	}
	out, err := qemuHelp(ctx, qemu, "-machine", "help")
	if err != nil {
		return "", fmt.Errorf("list machine types: %w", err)
	}
	if t, ok := parseMachineHelp(strings.NewReader(out))[machine]; ok {
		return t, nil
	}
	return "", invalidf("%s does not say which versioned machine type %q stands for ('%s -machine help' lists no \"%s ... (alias of ...)\")", qemu, machine, qemu, machine)
}

// parseMachineHelp reads `-machine help` output, whose lines look like
//
//	q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
//
// and returns alias -> target.
func parseMachineHelp(r io.Reader) map[string]string {
	const marker = "(alias of "
	aliases := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndex(line, marker)
		if i < 0 {
			continue
		}
		fields := strings.Fields(line)
		target, _, ok := strings.Cut(line[i+len(marker):], ")")
		if len(fields) == 0 || !ok || strings.TrimSpace(target) == "" {
			continue
		}
		aliases[fields[0]] = strings.TrimSpace(target)
	}
	return aliases
}
