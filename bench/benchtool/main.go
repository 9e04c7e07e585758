// Command benchtool holds the measurements of bench/run.sh that a shell does badly:
//
//	benchtool bareboot -kernel K -initrd I [-machine M] [-n N] [-params P] [-timeline]
//	    boots QEMU bare with exactly runv's command line (hypervisor/qemu.CommandLine) and
//	    the agent's probe mode: time from starting QEMU to RUNV-PROBE-OK on the console, and
//	    to QEMU's exit (the agent powers off at once).
//	    -params adds kernel parameters ("-P" drops runv's P); several -params are variants
//	    booted in turn. -timeline prints the last run's console, line by line, with the host
//	    time since QEMU started (guest printk times under-report under TCG).
//	    With "-- CMD [ARG...]" (and -label L), CMD is run and timed as repeat does, in turn
//	    with the boots, boot after run: a ratio of the two is then taken under the same
//	    state of the machine, not minutes apart.
//	benchtool qemu
//	    prints the QEMU binary runv runs by default (hypervisor.DefaultQEMU, found on PATH
//	    if it is a bare name), which bareboot runs too.
//	benchtool netfloor -initrd I -tap NAME -addr IP/LEN [-cpus N] [-queues Q] [-tcg OPTS] ...
//	    boots the bare network floor of bench/network.sh (see netfloor.go).
//	benchtool repeat [-n N] [-label L]... [-pre SHELL-CMD] -- CMD [ARG...] [::: CMD2 [ARG...]]...
//	    runs CMD once untimed, then N times timed; "{}" in an argument becomes a unique id.
//	    Several commands (separated by :::) run in turn, run after run (an A/B comparison
//	    under the same load), each with its own line; one -label per command.
//	    -pre runs (untimed, with sh -c) before every run, e.g. to wait for a pool to refill.
//	    A failing run aborts with its stderr: a broken setup never reports a fast time.
//	benchtool pss -match STR
//	    sums the PSS (/proc/PID/smaps_rollup) of the processes whose command line contains
//	    STR, by kind (qemu, pod daemon, shim, factory daemon, holder, other).
//	benchtool cpu -match STR [-for DURATION]
//	    the CPU time (user and system, all threads: /proc/PID/stat) the processes whose
//	    command line contains STR use during DURATION (default 30s), in millicores, by kind.
//	benchtool cgmove [-n N]
//	    the floor of moving a process into a pod's cgroup in every hierarchy (cgmove.go).
//	benchtool podrtt -dir POD-DIR [-n N]
//	    a running pod daemon's host round trips: dial and first call, a call on an open
//	    connection, a descriptor hand-over on stdio.sock (podrtt.go).
//	benchtool crilog -log CONTAINERD-LOG -pods PREFIX
//	    breaks the CRI pod starts of TestCRIStartTiming (RUNV_CRI_KEEP_LOG) down into phases
//	    from containerd's debug log and the shim's lines in it (crilog.go).
//	benchtool blocks -agent AGENT [-kernel VMLINUX] [-helper ADDR] [-split FUNC]... [-top N] LOG
//	    counts the blocks of a QEMU "-d in_asm" log by owner (kernel, agent, exec helper,
//	    other) and phase, the agent's by package and function, the kernel's by function
//	    with -kernel (blocks.go).
//
// Every timing line reads "LABEL n=N min=… median=… mean=… max=… (ms)".
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/runv-project/runv/factory/holder"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/internal/procstat"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool bareboot|qemu|netfloor|repeat|pss|cpu|cgmove|crilog|podrtt|blocks ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "bareboot":
		err = bareboot(os.Args[2:])
	case "qemu":
		var path string
		if path, err = exec.LookPath(hypervisor.DefaultQEMU()); err == nil {
			fmt.Println(path)
		}
	case "netfloor":
		err = netfloor(os.Args[2:])
	case "repeat":
		err = repeat(os.Args[2:])
	case "pss":
		err = pss(os.Args[2:])
	case "cpu":
		err = cpu(os.Args[2:])
	case "crilog":
		err = crilog(os.Args[2:])
	case "cgmove":
		err = cgmove(os.Args[2:])
	case "podrtt":
		err = podrtt(os.Args[2:])
	case "blocks":
		err = blocks(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		os.Exit(1)
	}
}

// stats prints one timing line.
func stats(label string, ds []time.Duration) {
	if len(ds) == 0 {
		fmt.Printf("%-34s no samples\n", label)
		return
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
	fmt.Printf("%-34s n=%d min=%s median=%s mean=%s max=%s (ms)\n", label, len(s), ms(s[0]), ms(med), ms(sum/time.Duration(len(s))), ms(s[len(s)-1]))
}

func bareboot(args []string) error {
	fs := flag.NewFlagSet("bareboot", flag.ExitOnError)
	kernel := fs.String("kernel", "/var/lib/runv/vmlinux", "guest kernel")
	initrd := fs.String("initrd", "/var/lib/runv/initrd.img", "guest initrd")
	machine := fs.String("machine", hypervisor.MachineMicroVM, "machine type")
	accel := fs.String("accel", hypervisor.AccelTCG, "accelerator")
	memory := fs.Int("memory", 128, "MiB")
	n := fs.Int("n", 10, "runs")
	show := fs.Bool("print-cmdline", false, "print the QEMU command line first")
	noNICs := fs.Bool("no-nics", false, "leave out the VM's network devices and q35's spare root ports for more (to measure what they cost)")
	noPorts := fs.Bool("no-nic-ports", false, "leave out q35's spare PCIe root ports for hot-plugged NICs (to measure what they cost)")
	var variants labels
	fs.Var(&variants, "params", "kernel parameters to add, space-separated (loglevel=7 shows the boot: it overrides quiet); "+
		"a word -P drops runv's parameter P. Given several times: one variant each, booted in turn")
	timeline := fs.Bool("timeline", false, "print every console line of each variant's last run with the host milliseconds since QEMU started")
	label := fs.String("label", "", "label of the command after --, timed in turn with the boots")
	translations := fs.String("translations", "", "a boot's translations file, saved by runv (/run/runv-translations/*.tb): "+
		"each variant is also booted restoring them, in turn, as runv's direct boots do")
	fs.Parse(args)
	if len(variants) == 0 {
		variants = labels{""}
	}
	type variant struct {
		params, translations string
	}
	var boots []variant
	for _, v := range variants {
		boots = append(boots, variant{params: v})
		if *translations != "" {
			boots = append(boots, variant{params: v, translations: *translations})
		}
	}
	between := fs.Args()
	if len(between) > 0 && *label == "" {
		*label = strings.Join(between, " ")
	}
	type result struct {
		toMarker, toExit, cpu []time.Duration
		lines                 []consoleLine
	}
	res := make([]result, len(boots))
	var betweenRuns []time.Duration
	tag := strconv.Itoa(os.Getpid())
	for i := 0; i <= *n; i++ {
		if len(between) > 0 {
			d, err := timedRun(between, fmt.Sprintf("b%s-%d", tag, i), "")
			if err != nil {
				return fmt.Errorf("%s: run %d failed: %w", *label, i, err)
			}
			if i > 0 { // the first is the warm-up, as the boots'
				betweenRuns = append(betweenRuns, d)
			}
		}
		for v, b := range boots {
			r := &res[v]
			m, e, c, cmdline, err := bootOnce(*kernel, *initrd, *machine, *accel, *memory, *noNICs, *noPorts, strings.Fields(b.params), b.translations, &r.lines)
			if err != nil {
				return err
			}
			if i == 0 {
				if *show {
					fmt.Println("qemu command line:", cmdline)
				}
				continue // warm-up: page cache, accel verdict
			}
			r.toMarker = append(r.toMarker, m)
			r.toExit = append(r.toExit, e)
			r.cpu = append(r.cpu, c)
		}
	}
	for v, r := range res {
		label := "bare qemu"
		if *noNICs {
			label += " (no NICs)"
		} else if *noPorts {
			label += " (no spare root ports)"
		}
		if len(variants) > 1 {
			label += " [" + cmp.Or(boots[v].params, "runv's parameters") + "]"
		}
		if boots[v].translations != "" {
			label += " [boot translations]"
		}
		stats(label+": start -> "+qemu.ProbeMarker, r.toMarker)
		stats(label+": start -> exit", r.toExit)
		// What QEMU itself ran (user+system), less at the mercy of a loaded host than the above.
		stats(label+": cpu time to exit", r.cpu)
		if *timeline {
			for _, l := range r.lines {
				fmt.Printf("%8.1f  %s\n", float64(l.at)/1e6, l.text)
			}
		}
	}
	if len(between) > 0 {
		stats(*label, betweenRuns)
	}
	return nil
}

// consoleLine is a line of the guest console and when the host read it.
type consoleLine struct {
	at   time.Duration // since QEMU started
	text string
}

// bootOnce boots one probe VM. Its console is a pipe, so the marker is an event. The
// console's lines replace *lines.
func bootOnce(kernel, initrd, machine, accel string, memory int, noNICs, noPorts bool, params []string, translations string, lines *[]consoleLine) (marker, exit, cpu time.Duration, cmdline string, err error) {
	dir, err := os.MkdirTemp("", "rvbare")
	if err != nil {
		return 0, 0, 0, "", err
	}
	defer os.RemoveAll(dir)
	l := &qemu.Launcher{}
	// Started as runv starts its QEMU: without transparent huge pages (the error is runv's
	// to ignore too).
	_ = qemu.DisableHugePages()
	bin, args, err := l.CommandLine(context.Background(), hypervisor.Config{
		ID: "bare", Dir: dir, ShareDir: dir, Kernel: kernel, Initrd: initrd,
		Machine: machine, Accel: accel, MemoryMiB: memory, KernelParams: append([]string{qemu.ProbeParam}, adds(params)...),
	}, true)
	if err != nil {
		return 0, 0, 0, "", err
	}
	args = withoutParams(args, drops(params))
	if noNICs || noPorts {
		args = withoutNICs(args, noNICs)
	}
	if translations != "" {
		args = withTranslations(args, translations)
	}
	cmd := exec.Command(bin, args...)
	// As runv starts it: in a network namespace of its own, where QEMU makes the NICs' taps.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, 0, "", err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, "", err
	}
	sc := bufio.NewScanner(out)
	*lines = (*lines)[:0]
	for sc.Scan() {
		*lines = append(*lines, consoleLine{time.Since(start), sc.Text()})
		if marker == 0 && strings.Contains(sc.Text(), qemu.ProbeMarker) {
			marker = time.Since(start)
		}
	}
	werr := cmd.Wait()
	exit = time.Since(start)
	if marker == 0 {
		return 0, 0, 0, "", fmt.Errorf("no %s from %s (%v): %s", qemu.ProbeMarker, bin, werr, stderr.String())
	}
	return marker, exit, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), bin + " " + strings.Join(args, " "), nil
}

// adds are the parameters of a -params variant to add, drops (as "-P") those to take out.
func adds(params []string) (out []string) {
	for _, p := range params {
		if !strings.HasPrefix(p, "-") {
			out = append(out, p)
		}
	}
	return out
}

func drops(params []string) (out []string) {
	for _, p := range params {
		if strings.HasPrefix(p, "-") {
			out = append(out, p[1:])
		}
	}
	return out
}

// withoutParams takes the kernel parameters drop out of a command line's -append.
func withoutParams(args, drop []string) []string {
	out := slices.Clone(args)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "-append" {
			out[i+1] = strings.Join(slices.DeleteFunc(strings.Fields(out[i+1]), func(p string) bool { return slices.Contains(drop, p) }), " ")
		}
	}
	return out
}

// withoutNICs drops the spare root ports for hot-plugged NICs from a command line, and with
// devices the -netdev tap and virtio-net -device pairs too.
func withoutNICs(args []string, devices bool) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if i+1 == len(args) {
			out = append(out, args[i])
			break
		}
		nic := args[i] == "-netdev" || args[i] == "-device" && strings.HasPrefix(args[i+1], "virtio-net")
		port := args[i] == "-device" && strings.HasPrefix(args[i+1], "pcie-root-port,id=nicport")
		if port || devices && nic {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// withTranslations has a command line restore a boot's translations file: the accelerator
// moves from -machine to -accel, which takes the property (as runv's command line does).
func withTranslations(args []string, file string) []string {
	out := slices.Clone(args)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "-machine" {
			out[i+1] = strings.Replace(out[i+1], ",accel="+hypervisor.AccelTCG, "", 1)
		}
	}
	return append(out, "-accel", hypervisor.AccelTCG+",x-tb-snapshot-load="+file)
}

// labels is a repeatable -label flag.
type labels []string

func (l *labels) String() string     { return strings.Join(*l, ",") }
func (l *labels) Set(v string) error { *l = append(*l, v); return nil }

// commandSeparator separates the commands of one repeat, run in turn.
const commandSeparator = ":::"

func repeat(args []string) error {
	fs := flag.NewFlagSet("repeat", flag.ExitOnError)
	n := fs.Int("n", 10, "timed runs (of each command)")
	var names labels
	fs.Var(&names, "label", "label (one per command, in order)")
	pre := fs.String("pre", "", "shell command run untimed before every run")
	fs.Parse(args)
	var cmds [][]string
	cur := []string{}
	for _, a := range fs.Args() {
		if a == commandSeparator {
			cmds, cur = append(cmds, cur), []string{}
			continue
		}
		cur = append(cur, a)
	}
	cmds = append(cmds, cur)
	for i, c := range cmds {
		if len(c) == 0 {
			return fmt.Errorf("repeat: command %d is empty", i+1)
		}
		if i >= len(names) {
			names = append(names, strings.Join(c, " "))
		}
	}
	run := func(argv []string, id string) (time.Duration, error) { return timedRun(argv, id, *pre) }
	tag := strconv.Itoa(os.Getpid())
	for c, argv := range cmds {
		if _, err := run(argv, fmt.Sprintf("w%s-%d", tag, c)); err != nil {
			return fmt.Errorf("%s: warm-up run failed: %w", names[c], err)
		}
	}
	// Round robin: the commands see the same machine, load included, run after run.
	ds := make([][]time.Duration, len(cmds))
	for i := 1; i <= *n; i++ {
		for c, argv := range cmds {
			d, err := run(argv, fmt.Sprintf("r%s-%d-%d", tag, c, i))
			if err != nil {
				return fmt.Errorf("%s: run %d failed: %w", names[c], i, err)
			}
			ds[c] = append(ds[c], d)
		}
	}
	for c := range cmds {
		stats(names[c], ds[c])
	}
	return nil
}

// timedRun runs pre (if any, with sh -c, untimed), then argv with "{}" in its arguments
// replaced by id, and returns how long argv took; a failure carries its stderr.
func timedRun(argv []string, id, pre string) (time.Duration, error) {
	if pre != "" {
		if out, err := exec.Command("sh", "-c", pre).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("-pre %q: %v: %s", pre, err, strings.TrimSpace(string(out)))
		}
	}
	a := make([]string, len(argv))
	for i, x := range argv {
		a[i] = strings.ReplaceAll(x, "{}", id)
	}
	cmd := exec.Command(a[0], a[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s: %v: %s", strings.Join(a, " "), err, strings.TrimSpace(stderr.String()))
	}
	return d, nil
}

// proc is a process whose command line matched.
type proc struct {
	pid  int
	dir  string // /proc/PID
	kind string
}

// matching lists the processes (but this one) whose command line contains match.
func matching(match string) []proc {
	var out []proc
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range dirs {
		cl, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !bytes.Contains(cl, []byte(match)) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(p))
		if pid == os.Getpid() {
			continue
		}
		out = append(out, proc{pid: pid, dir: p, kind: kind(strings.Split(string(cl), "\x00"))})
	}
	return out
}

// byKindLine formats per-kind sums as "kind=<value><unit>/<count> ...", kinds sorted.
func byKindLine(byKind map[string]float64, count map[string]int, unit string) string {
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s=%.1f%s/%d", k, byKind[k], unit, count[k]))
	}
	return strings.Join(parts, " ")
}

func pss(args []string) error {
	fs := flag.NewFlagSet("pss", flag.ExitOnError)
	match := fs.String("match", "", "substring of the command line")
	fs.Parse(args)
	if *match == "" {
		return errors.New("pss: -match is required")
	}
	byKind := map[string]float64{}
	count := map[string]int{}
	total := 0
	for _, p := range matching(*match) {
		kb, err := pssKB(filepath.Join(p.dir, "smaps_rollup"))
		if err != nil {
			continue // exited meanwhile
		}
		byKind[p.kind] += float64(kb) / 1024
		count[p.kind]++
		total += kb
	}
	fmt.Printf("pss_total_kib=%d (%s)\n", total, byKindLine(byKind, count, "MiB"))
	return nil
}

func cpu(args []string) error {
	fs := flag.NewFlagSet("cpu", flag.ExitOnError)
	match := fs.String("match", "", "substring of the command line")
	window := fs.Duration("for", 30*time.Second, "how long to measure")
	fs.Parse(args)
	if *match == "" {
		return errors.New("cpu: -match is required")
	}
	procs := matching(*match)
	before := map[int]time.Duration{}
	for _, p := range procs {
		if t, err := procstat.CPUTime(p.pid); err == nil {
			before[p.pid] = t
		}
	}
	start := time.Now()
	time.Sleep(*window) // the measurement window itself
	elapsed := time.Since(start).Seconds()
	byKind := map[string]float64{}
	count := map[string]int{}
	total := 0.0
	for _, p := range procs {
		t0, ok := before[p.pid]
		t1, err := procstat.CPUTime(p.pid)
		if !ok || err != nil {
			continue // exited meanwhile
		}
		m := (t1 - t0).Seconds() / elapsed * 1000
		byKind[p.kind] += m
		count[p.kind]++
		total += m
	}
	fmt.Printf("cpu_millicores=%.1f over %.0fs (%s)\n", total, elapsed, byKindLine(byKind, count, "m"))
	return nil
}

func kind(argv []string) string {
	if len(argv) == 0 {
		return "other"
	}
	if strings.Contains(filepath.Base(argv[0]), "qemu") {
		return "qemu"
	}
	if filepath.Base(argv[0]) == holder.Binary {
		return "holder" // a factory daemon's holder of one VM, its own program
	}
	for _, a := range argv[1:] {
		if a == "--hold" {
			return "holder" // the same, runv itself (no runv-holder beside it)
		}
	}
	for _, a := range argv[1:] {
		switch a {
		case "containerd":
			return "daemon"
		case "shim":
			return "shim"
		case "factory-daemon":
			return "factory"
		}
	}
	return "other"
}

func pssKB(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("%s: no Pss line", path)
}
