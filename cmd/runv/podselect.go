package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

// Annotations by which CRI implementations group a pod's containers.
const (
	annotationCRISandboxID     = "io.kubernetes.cri.sandbox-id"
	annotationCRIContainerType = "io.kubernetes.cri.container-type"
	annotationCRIOSandboxID    = "io.kubernetes.cri-o.SandboxID"
	annotationCRIOContainerTyp = "io.kubernetes.cri-o.ContainerType"
)

// nsPathPid matches a namespace path of a process: /proc/<pid>/ns/<type>.
var nsPathPid = regexp.MustCompile(`^/proc/(\d+)/ns/[a-z_]+$`)

// containerLister is the part of the state store pod selection reads.
type containerLister interface {
	List() ([]string, error)
	Lock(id string) (*state.Handle, error)
}

// podMembership decides which existing container's pod a new container joins: the one its
// CRI sandbox annotation names, or the one whose process a linux.namespaces[].path points
// at (the pid runv reports for a container is its shim's: docker's --net=container:X and
// containerd's pod specs use it). It returns nil for a container that starts its own pod.
func podMembership(store containerLister, id string, spec *specs.Spec) (*state.Container, error) {
	if sandbox := sandboxAnnotation(spec.Annotations); sandbox != "" && sandbox != id {
		rec, err := loadRecord(store, sandbox)
		if err != nil {
			return nil, fmt.Errorf("container %q belongs to sandbox %q (annotation), which runv does not know: create the sandbox first: %w", id, sandbox, errdefs.ErrNotFound)
		}
		return rec, nil
	}
	if spec.Linux == nil {
		return nil, nil
	}
	var byPid map[int]*state.Container
	var err error
	for _, ns := range spec.Linux.Namespaces {
		m := nsPathPid.FindStringSubmatch(ns.Path)
		if m == nil {
			continue
		}
		if byPid == nil {
			if byPid, err = containersByPid(store); err != nil {
				return nil, fmt.Errorf("container %q: find the pod of namespace path %s: %w", id, ns.Path, err)
			}
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil {
			return nil, fmt.Errorf("container %q: namespace path %s: %w: %w", id, ns.Path, err, errdefs.ErrInvalidArgument)
		}
		if rec, ok := byPid[pid]; ok {
			if ns.Type == specs.MountNamespace {
				return nil, fmt.Errorf("container %q cannot share the mount namespace of container %q: every container of a pod has its own root: %w", id, rec.ID, errdefs.ErrInvalidArgument)
			}
			return rec, nil
		}
	}
	return nil, nil
}

// sandboxAnnotation returns the sandbox a CRI container names, or "" for a sandbox itself.
func sandboxAnnotation(a map[string]string) string {
	if a[annotationCRIContainerType] == "sandbox" || a[annotationCRIOContainerTyp] == "sandbox" {
		return ""
	}
	if s := a[annotationCRISandboxID]; s != "" {
		return s
	}
	return a[annotationCRIOSandboxID]
}

func loadRecord(store containerLister, id string) (*state.Container, error) {
	h, err := store.Lock(id)
	if err != nil {
		return nil, err
	}
	defer h.Unlock()
	return h.Load()
}

// containersByPid maps the pid runv reports for each container (its shim's) to its record.
// A record that cannot be read is left out with a warning: it may be half deleted, and
// belongs to no pod a new container could join.
func containersByPid(store containerLister) (map[int]*state.Container, error) {
	ids, err := store.List()
	if err != nil {
		return nil, err
	}
	out := map[int]*state.Container{}
	for _, id := range ids {
		rec, err := loadRecord(store, id)
		if err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) {
				logging.G(context.Background()).Warn("pod selection: container record unreadable; skipped", "container", id, "error", err)
			}
			continue
		}
		if rec.Shim.Pid > 0 {
			out[rec.Shim.Pid] = rec
		}
	}
	return out, nil
}
