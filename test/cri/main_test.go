//go:build integration

// Package cri runs Kubernetes' CRI against a private containerd (Debian's 1.6, CRI plugin
// on) with two runtime handlers side by side on the same pod specs: "runc"
// (io.containerd.runc.v2) and "runv" (io.containerd.runv.v2, runv's own shim); TestCRI's
// cases also run with "runvrunc" (runv as the OCI binary of containerd's runc shim). Every
// case that passes with runc must pass with runv, or be listed in docs/kubernetes.md with
// its reason (and skipped here with that reason). containerd runs in a network namespace of
// the suite's, where CNI's bridge plugin gives pods their addresses; nothing touches the
// host's network.
package cri

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	rt "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/runv-project/runv/test/image"
)

// The suite's environment.
var (
	work       string // everything the suite makes
	netnsName  string // containerd's network namespace
	ctrd       *exec.Cmd
	ctrdDone   chan struct{}
	ctrdLog    string
	socket     string
	shimRoot   string // RUNV_ROOT of the shim's pods
	runtimeSvc rt.RuntimeServiceClient
	imageSvc   rt.ImageServiceClient
	busybox    string // image names as the CRI knows them
	cgroupRoot string // pods' cgroup parent
	runvBinary string // the runv CLI, BinaryName of the runvrunc handler
)

// handlers are the RuntimeClass handlers every case runs with: RUNV_CRI_HANDLERS, a comma
// list, or runc and runv. runv-pool (runv's shim, VMs from a pool of the factory daemon,
// full when each of its pods starts) takes the pooled route through every case.
var handlers = func() []string {
	if v := os.Getenv("RUNV_CRI_HANDLERS"); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"runc", "runv"}
}()

const config = `version = 2
root = "%[1]s/root"
state = "%[1]s/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "%[1]s/c.sock"
[ttrpc]
  address = "%[1]s/c.sock.ttrpc"
[debug]
  level = "debug"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%[2]s"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "%[1]s/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "%[1]s/runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv]
      runtime_type = "io.containerd.runv.v2"
    # runv whose pods take their VMs from a pool (options.ConfigPath: a factory policy);
    # the pool is the factory daemon of the shim's root, started by the timing test.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv-pool]
      runtime_type = "io.containerd.runv.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv-pool.options]
        ConfigPath = "%[1]s/pool.json"
    # runv as an OCI runtime under containerd's runc shim (BinaryName), the route without
    # runv's own shim.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runvrunc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runvrunc.options]
        BinaryName = "%[3]s"
        Root = "%[1]s/runvrunc"
`

// baselineRuntime is the handler runv-pool-base: runv-pool with another build of runv's
// shim (RUNV_CRI_BENCH_BASELINE_SHIM, installed into the suite's PATH under the runtime
// name io.containerd.runvbase.v2), so that TestCRIStartTiming compares two builds in one
// run.
const baselineRuntime = `    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv-pool-base]
      runtime_type = "io.containerd.runvbase.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv-pool-base.options]
        ConfigPath = "%[1]s/pool.json"
`

// poolPolicy is the factory policy of the runv-pool handler: a pool of two VMs refilled
// from a template (made under shimRoot/@templates on first use; teardown removes it).
const poolPolicy = `[{"cache": 2}]`

const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "rvcri",
  "plugins": [
    {"type": "bridge", "bridge": "crib0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "%[1]s/cni-ipam", "ranges": [[{"subnet": "10.89.0.0/24"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

func TestMain(m *testing.M) {
	code := 1
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "cri tests:", err)
	} else if slices.ContainsFunc(handlers, pooled) {
		if stopPool, err = startPool(); err != nil {
			fmt.Fprintln(os.Stderr, "cri tests:", err)
		} else {
			code = m.Run()
			stopPool()
			stopPool = nil
		}
	} else {
		code = m.Run()
	}
	if problems := teardown(); len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "cri tests: after the suite:\n  %s\n", strings.Join(problems, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func setup() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the CRI tests need root (containerd, network namespaces, VMs)")
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "nsenter", "ip", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s is missing (make client-deps installs containerd and containernetworking-plugins)", b)
		}
	}
	runvBinary = os.Getenv("RUNV_CLIENT_RUNTIME")
	if runvBinary == "" {
		runvBinary = "/usr/local/bin/runv"
	}
	shim := os.Getenv("RUNV_CLIENT_SHIM")
	if shim == "" {
		shim = filepath.Join(filepath.Dir(runvBinary), "containerd-shim-runv-v2")
	}
	if _, err := os.Stat(shim); err != nil {
		return fmt.Errorf("runv's containerd shim is not installed (%v): make install, or set RUNV_CLIENT_SHIM", err)
	}
	var err error
	if work, err = os.MkdirTemp("", "rvcri-"); err != nil {
		return err
	}
	shimRoot = filepath.Join(work, "sr")
	cgroupRoot = "/" + filepath.Base(work)
	for _, d := range []string{"net.d", "cni-ipam"} {
		os.MkdirAll(filepath.Join(work, d), 0o755)
	}
	pause, err := image.Pause(filepath.Join(work, "pause.tar"), "runv-test/pause:1.0")
	if err != nil {
		return fmt.Errorf("build the pause image: %w", err)
	}
	bb, err := image.Busybox(filepath.Join(work, "busybox.tar"), "")
	if err != nil {
		return fmt.Errorf("build the busybox image: %w", err)
	}
	busybox = bb.Qualified
	if err := os.WriteFile(filepath.Join(work, "pool.json"), []byte(poolPolicy), 0o644); err != nil {
		return err
	}
	ctrdConfig := fmt.Sprintf(config, work, pause.Qualified, runvBinary)
	path := filepath.Dir(shim) + ":" + os.Getenv("PATH")
	if base := os.Getenv("RUNV_CRI_BENCH_BASELINE_SHIM"); base != "" {
		// containerd finds a runtime's shim by its name in PATH.
		dir := filepath.Join(work, "baseline")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.Symlink(base, filepath.Join(dir, "containerd-shim-runvbase-v2")); err != nil {
			return fmt.Errorf("RUNV_CRI_BENCH_BASELINE_SHIM: %w", err)
		}
		ctrdConfig += fmt.Sprintf(baselineRuntime, work)
		path = dir + ":" + path
	}
	if err := os.WriteFile(filepath.Join(work, "config.toml"), []byte(ctrdConfig), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(work, "net.d", "10-rvcri.conflist"), []byte(fmt.Sprintf(cniConfig, work)), 0o644); err != nil {
		return err
	}
	netnsName = filepath.Base(work)
	if out, err := exec.Command("ip", "netns", "add", netnsName).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", netnsName, err, out)
	}
	if out, err := exec.Command("ip", "-n", netnsName, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("loopback up in %s: %v: %s", netnsName, err, out)
	}
	ctrdLog = filepath.Join(work, "containerd.log")
	logf, err := os.Create(ctrdLog)
	if err != nil {
		return err
	}
	defer logf.Close()
	// nsenter changes the network namespace only (ip netns exec would remount /sys).
	ctrd = exec.Command("nsenter", "--net=/run/netns/"+netnsName, "containerd", "--config", filepath.Join(work, "config.toml"))
	ctrd.Env = append(os.Environ(), "PATH="+path, "RUNV_ROOT="+shimRoot)
	ctrd.Stdout, ctrd.Stderr = logf, logf
	ctrd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := ctrd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	ctrdDone = make(chan struct{})
	go func() { ctrd.Wait(); close(ctrdDone) }()
	socket = filepath.Join(work, "c.sock")
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	runtimeSvc, imageSvc = rt.NewRuntimeServiceClient(conn), rt.NewImageServiceClient(conn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := runtimeSvc.Version(ctx, &rt.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		select {
		case <-ctrdDone:
			return fmt.Errorf("containerd exited: see %s", ctrdLog)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd's CRI did not answer within 60s (%v): see %s", err, ctrdLog)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, tar := range []string{pause.Path, bb.Path} {
		if out, err := exec.Command("ctr", "-a", socket, "-n", "k8s.io", "images", "import", tar).CombinedOutput(); err != nil {
			return fmt.Errorf("import %s: %v: %s", tar, err, out)
		}
	}
	fmt.Fprintf(os.Stderr, "cri tests: containerd in netns %s, work dir %s, shim %s\n", netnsName, work, shim)
	return nil
}

// teardown removes every pod, stops containerd and removes the network namespace and the
// pods' cgroups; it reports what was left.
func teardown() (problems []string) {
	if runtimeSvc != nil && ctrd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		if pods, err := runtimeSvc.ListPodSandbox(ctx, &rt.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				problems = append(problems, "pod left: "+p.Metadata.Name)
				runtimeSvc.StopPodSandbox(ctx, &rt.StopPodSandboxRequest{PodSandboxId: p.Id})
				runtimeSvc.RemovePodSandbox(ctx, &rt.RemovePodSandboxRequest{PodSandboxId: p.Id})
			}
		}
		cancel()
	}
	if ctrd != nil && ctrd.Process != nil {
		ctrd.Process.Signal(syscall.SIGTERM)
		select {
		case <-ctrdDone:
		case <-time.After(20 * time.Second):
			ctrd.Process.Kill()
			<-ctrdDone
			problems = append(problems, "containerd did not stop on SIGTERM: killed")
		}
	}
	for _, p := range leftovers() {
		problems = append(problems, "process left: "+p)
	}
	if shimRoot != "" && runvBinary != "" {
		if out, err := exec.Command(runvBinary, "--root", shimRoot, "manage", "remove-template", "--all").CombinedOutput(); err != nil {
			problems = append(problems, fmt.Sprintf("remove-template --all: %v: %s", err, out))
		}
	}
	if netnsName != "" {
		exec.Command("ip", "netns", "del", netnsName).Run()
	}
	if cgroupRoot != "" {
		// Kubelet owns pod-level cgroups; without one, the suite removes them.
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cgroupRoot))
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", cgroupRoot))
		for _, d := range dirs {
			exec.Command("find", d, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";").Run()
		}
	}
	if keep := os.Getenv("RUNV_CRI_KEEP_LOG"); keep != "" && ctrdLog != "" {
		// containerd's log holds the shims' (at debug level): what a timing breakdown reads.
		if b, err := os.ReadFile(ctrdLog); err == nil {
			if err := os.WriteFile(keep, b, 0o644); err != nil {
				problems = append(problems, "RUNV_CRI_KEEP_LOG: "+err.Error())
			}
		}
	}
	if work != "" {
		if out, _ := exec.Command("sh", "-c", "grep -c ' "+work+"/' /proc/self/mountinfo").Output(); strings.TrimSpace(string(out)) != "0" {
			problems = append(problems, "mounts left under "+work)
		} else {
			os.RemoveAll(work)
		}
	}
	return problems
}

// leftovers lists processes of the suite's containerd that outlived their pods: shims
// and VMs. While the suite's pool runs, its daemon and the VMs it holds are not counted
// (nor a VM it handed over: remove finds a pod's VM by its cgroup, and teardown counts
// every process after the pool stopped).
func leftovers() []string {
	var out []string
	for _, l := range suiteProcesses() {
		if stopPool != nil && (strings.Contains(l, "manage factory-daemon") || strings.Contains(l, "/@factory/pools/")) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// suiteProcesses lists the processes whose command line names the suite's work directory
// (but containerd): "<pid> <command line>".
func suiteProcesses() []string {
	var out []string
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ")
		if work != "" && strings.Contains(cmd, work+"/") && !strings.HasPrefix(cmd, "containerd ") && !strings.Contains(cmd, "nsenter") {
			out = append(out, filepath.Base(filepath.Dir(p))+" "+cmd)
		}
	}
	return out
}

var nameRE = regexp.MustCompile(`[^a-z0-9]+`)
