package main

import (
	"context"
	"errors"
	"testing"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
)

// runc's `delete --force` of a container that does not exist succeeds: containerd's runc
// shim runs it after its own delete, podman after a failed create.
func TestDeleteForceOfMissingContainerSucceeds(t *testing.T) {
	g := &globals{root: t.TempDir()}
	g.store = &state.Store{Root: g.root}
	if err := deleteContainer(context.Background(), g, "nothere", true); err != nil {
		t.Errorf("delete --force of a missing container: %v, want success", err)
	}
	if err := deleteContainer(context.Background(), g, "nothere", false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("delete of a missing container: %v, want not found", err)
	}
}
