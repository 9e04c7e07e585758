package shimv2

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/oci"
)

// Annotations that put a container into an existing pod (shim and VM).
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	// annotationGroup is containerd's runc shim's grouping: containers naming the same
	// group share one shim (for runv: one VM), without sharing namespaces.
	annotationGroup = "io.containerd.runc.v2.group"
)

// membership says which pod a container belongs to and whose namespaces it joins.
type membership struct {
	// pod is the id of the pod (its shim and VM): the CRI sandbox, the group, or the
	// container itself.
	pod string
	// sandbox is the container whose network, IPC and UTS namespaces this one joins in the
	// guest ("" for none: a CRI sandbox itself, or a container of a plain group).
	sandbox string
}

// podOf reads the annotations by which clients group containers.
func podOf(id string, annotations map[string]string) membership {
	if sb := annotations[annotationSandboxID]; sb != "" {
		if annotations[annotationContainerType] == "container" && sb != id {
			return membership{pod: sb, sandbox: sb}
		}
		return membership{pod: sb}
	}
	if g := annotations[annotationGroup]; g != "" {
		return membership{pod: g}
	}
	return membership{pod: id}
}

// readSpec decodes a bundle's config.json, its paths resolved (oci.ResolvePaths).
func readSpec(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the bundle's config: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if s.Root == nil || s.Root.Path == "" {
		return nil, fmt.Errorf("%s: root.path is missing: %w", path, errdefs.ErrInvalidArgument)
	}
	oci.ResolvePaths(bundle, &s)
	return &s, nil
}
