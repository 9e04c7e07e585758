package state

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzLoad reads arbitrary bytes as a container's state.json (a crash or a full disk may
// have left anything). Load returns a record or an error that names the file as corrupt;
// a record it returns survives Save and Load unchanged.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"id":"c1","bundle":"/b","pod":"c1","podDir":"/run/runv/@pods/c1","shim":{"pid":1,"startTime":2},"exec":{"e":{"pid":3}}}`))
	f.Add([]byte(`{"spec":{"ociVersion":"1.0.2","process":{"args":["sh"]}}}`))
	f.Add([]byte(`{"hostCgroup":{}}`))
	f.Add([]byte(`{"created":"not a time"}`))
	f.Add([]byte(`{"id":`))
	f.Add([]byte{})
	s := &Store{Root: f.TempDir()}
	h, err := s.Create("c1")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(h.Unlock)
	path := filepath.Join(h.Dir, stateFile)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := h.Load()
		if err != nil {
			if !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not say which file is corrupt: %v", err)
			}
			return
		}
		if err := h.Save(c); err != nil {
			t.Fatal(err)
		}
		again, err := h.Load()
		if err != nil {
			t.Fatalf("a record Load returned does not load after Save: %v", err)
		}
		a, _ := json.Marshal(c)
		b, _ := json.Marshal(again)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("record changed through Save and Load:\n%s\n%s", a, b)
		}
	})
}
