package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/convert"
	"github.com/runv-project/runv/api/ocispec"
)

// podNamespaceDir pins the pod's namespaces: one bind-mounted nsfs file per type.
const podNamespaceDir = "/run/runv/ns"

// pinPodNamespaces makes the namespaces of the pod's first container (the sandbox), whose
// init is pid, the pod's for as long as the VM lives: it bind-mounts their nsfs files under
// dir (convert.PodShared types), so that they outlive the sandbox, as Kata keeps its sandbox's. A
// container that joins the pod after the sandbox exited still finds the pod's hostname and
// IPC objects. The sandbox made them (libcontainer, with its user namespace if it has one,
// and its hostname), exactly as it would without a pod.
func pinPodNamespaces(pid int, dir string) (map[specs.LinuxNamespaceType]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin the pod's namespaces: %w", err)
	}
	paths := make(map[specs.LinuxNamespaceType]string, len(convert.PodShared))
	var errs []error
	for _, t := range convert.PodShared {
		name := ocispec.Namespaces[t].ProcName
		src := "/proc/" + strconv.Itoa(pid) + "/ns/" + name
		// dir is clean (the callers'): filepath.Join's Clean would be ~40 translated
		// blocks that a cold guest's first container runs for this alone.
		p := dir + "/" + name
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			errs = append(errs, err)
			break
		}
		if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
			errs = append(errs, fmt.Errorf("bind %s on %s: %w", src, p, err))
			os.Remove(p)
			break
		}
		paths[t] = p
	}
	if len(errs) > 0 {
		unpinPodNamespaces(paths)
		return nil, fmt.Errorf("pin the pod's namespaces: %w", errors.Join(errs...))
	}
	return paths, nil
}

// unpinPodNamespaces releases what pinPodNamespaces pinned.
func unpinPodNamespaces(paths map[specs.LinuxNamespaceType]string) {
	for _, p := range paths {
		unix.Unmount(p, unix.MNT_DETACH)
		os.Remove(p)
	}
}
