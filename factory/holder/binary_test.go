package holder

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBinaryBesideTakesOnlyItsOwnBuild(t *testing.T) {
	tests := []struct {
		name    string
		script  string // the Binary's text; "" installs none
		wantErr string // "" wants the Binary's path
	}{
		{name: "same build", script: "#!/bin/sh\n[ \"$1\" = --version ] && echo 1a2b3c4\n"},
		{name: "other build", script: "#!/bin/sh\necho 9f8e7d6\n", wantErr: `is version "9f8e7d6", runv is "1a2b3c4": install both from one build`},
		{name: "no version", script: "#!/bin/sh\nexit 3\n", wantErr: "runv-holder --version: exit status 3"},
		{name: "not installed", wantErr: "no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.script != "" {
				if err := os.WriteFile(filepath.Join(dir, Binary), []byte(tt.script), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got, err := BinaryBeside(context.Background(), dir, "1a2b3c4")
			if tt.wantErr == "" {
				if err != nil || got != filepath.Join(dir, Binary) {
					t.Fatalf("BinaryBeside = %q, %v; want %q", got, err, filepath.Join(dir, Binary))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("BinaryBeside = %q, %v; want an error with %q", got, err, tt.wantErr)
			}
		})
	}
}
