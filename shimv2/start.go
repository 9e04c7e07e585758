package shimv2

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// StartShim is `containerd-shim-runv-v2 start`, run by containerd in the new container's
// bundle: it answers the address of the shim of the container's pod, starting that shim
// (this binary, serving the task API on an inherited socket) when the container starts a
// pod.
func (s *service) StartShim(ctx context.Context, opts shim.StartOpts) (_ string, retErr error) {
	bundle, err := os.Getwd()
	if err != nil {
		return "", err
	}
	spec, err := readSpec(bundle)
	if err != nil {
		return "", fmt.Errorf("container %q: %w", opts.ID, err)
	}
	member := podOf(opts.ID, spec.Annotations)
	address, err := shim.SocketAddress(ctx, opts.Address, member.pod)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket for pod %s: %w", member.pod, err)
		}
		// The pod's shim is running: the container joins it.
		if shim.CanConnect(address) {
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		// A shim that died left its socket.
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket of pod %s: %w", member.pod, err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket for pod %s: %w", member.pod, err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", ns, "-id", opts.ID, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = bundle
	cmd.ExtraFiles = []*os.File{f} // fd 3: the socket the shim library serves on
	// Its own process group: signals to containerd's group do not reach the pod.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim for pod %s: %w", member.pod, err)
	}
	// The shim outlives this command; init adopts it.
	go cmd.Wait()
	return address, nil
}

// Cleanup is `containerd-shim-runv-v2 delete`, run by containerd in a container's bundle
// when its shim is gone or the task was deleted: it releases what the container held on the
// host (its rootfs mount) and, when no shim serves its pod any more, the pod's directory
// (share mounts, sockets).
func (s *service) Cleanup(ctx context.Context) (*taskapi.DeleteResponse, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	log := logging.G(s.ctx)
	unmountRootfs(ctx, bundle)
	if spec, err := readSpec(bundle); err == nil {
		dir := s.cfg.podDir(s.namespace, podOf(filepath.Base(bundle), spec.Annotations).pod)
		if _, err := os.Stat(dir); err == nil && !ownerAlive(dir) {
			// The network's taps and filters, its namespace's mount, the share's mounts,
			// then the directory.
			if err := supervisor.CleanupPodDir(dir); err != nil {
				log.Warn("cleanup: release the pod's directory", "dir", dir, "error", err)
			}
			// A container that started a pod of its own made the pod's cgroup at its
			// cgroupsPath (a CRI pod's belongs to the kubelet).
			if spec.Annotations[annotationContainerType] == "" {
				if path, _ := podCgroupPath(spec, false); path != "" {
					if err := removeCgroupDirs(path); err != nil {
						log.Warn("cleanup: remove pod cgroup", "path", path, "error", err)
					}
				}
			}
		}
	}
	return &taskapi.DeleteResponse{
		ExitedAt:   timestamppb.New(time.Now()),
		ExitStatus: 128 + uint32(syscall.SIGKILL),
	}, nil
}

// ownerAlive reports whether the shim that wrote a pod directory's owner file still runs.
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	// Not kill(pid, 0): containerd runs this as soon as a killed shim's connection closes,
	// before anyone reaped it, and a zombie answers kill(0) (the fault matrix's shim row).
	return state.Process{Pid: pid}.Alive()
}
