package qemu

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/runv-project/runv/internal/atomicfile"
)

// hostFiles are the host's files a QEMU binary needs to run, found once per binary: they
// go into its jail read-only, at their host paths (jail.go).
type hostFiles struct {
	// files are the binary, its ELF interpreter and its shared libraries, as the loader
	// names them (paths through symlinks are reproduced in the jail).
	files []string
	// dirs are the directories QEMU loads firmware, option ROMs and modules from.
	dirs []string
}

// loaderSearchDirs are where the dynamic loader looks without /etc/ld.so.cache: libraries
// elsewhere need the cache in the jail too.
var loaderSearchDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// ldCache is the dynamic loader's cache of library paths.
const ldCache = "/etc/ld.so.cache"

// discoverTimeout bounds each run of QEMU (or its loader) that discovery makes.
const discoverTimeout = 10 * time.Second

var hostFilesCache sync.Map // binary path → *hostFilesOnce

type hostFilesOnce struct {
	once  sync.Once
	files hostFiles
	err   error
}

// qemuHostFiles returns what the QEMU binary at path needs: from memory after the first
// call in this process, else from cacheFile (written by an earlier process: every pod
// daemon is one, and discovery runs QEMU twice, 16 ms measured), else discovered.
func qemuHostFiles(path, cacheFile string) (hostFiles, error) {
	v, _ := hostFilesCache.LoadOrStore(path, &hostFilesOnce{})
	h := v.(*hostFilesOnce)
	h.once.Do(func() {
		key, err := hostFilesKeyOf(path)
		if err != nil {
			h.err = fmt.Errorf("qemu %s: %w", path, err)
			return
		}
		if f, ok := readHostFiles(cacheFile, key); ok {
			h.files = f
			return
		}
		if h.files, h.err = discoverHostFiles(path); h.err == nil {
			writeHostFiles(cacheFile, key, h.files)
		}
	})
	return h.files, h.err
}

// hostFilesKey is what a discovery depends on: a new QEMU binary is discovered again.
type hostFilesKey struct {
	QEMU  string `json:"qemu"`
	Mtime int64  `json:"mtime"`
	Size  int64  `json:"size"`
}

type hostFilesRecord struct {
	Key   hostFilesKey `json:"key"`
	Files []string     `json:"files"`
	Dirs  []string     `json:"dirs"`
}

func hostFilesKeyOf(qemu string) (hostFilesKey, error) {
	st, err := os.Stat(qemu)
	if err != nil {
		return hostFilesKey{}, err
	}
	return hostFilesKey{QEMU: qemu, Mtime: st.ModTime().UnixNano(), Size: st.Size()}, nil
}

// readHostFiles returns the cached discovery for key if every file and directory in it
// still exists (a library upgraded under another name is discovered again).
func readHostFiles(cacheFile string, key hostFilesKey) (hostFiles, bool) {
	b, err := os.ReadFile(cacheFile)
	if err != nil {
		return hostFiles{}, false
	}
	var r hostFilesRecord
	if json.Unmarshal(b, &r) != nil || r.Key != key || len(r.Files) == 0 {
		return hostFiles{}, false
	}
	for _, p := range append(append([]string(nil), r.Files...), r.Dirs...) {
		if _, err := os.Stat(p); err != nil {
			return hostFiles{}, false
		}
	}
	return hostFiles{files: r.Files, dirs: r.Dirs}, true
}

// writeHostFiles caches a discovery; failing to is not an error (the next process
// discovers again).
func writeHostFiles(cacheFile string, key hostFilesKey, f hostFiles) {
	b, err := json.Marshal(hostFilesRecord{Key: key, Files: f.files, Dirs: f.dirs})
	if err != nil || os.MkdirAll(filepath.Dir(cacheFile), 0o755) != nil {
		return
	}
	atomicfile.Write(cacheFile, append(b, '\n'), 0o644)
}

func discoverHostFiles(qemu string) (hostFiles, error) {
	ctx, cancel := context.WithTimeout(context.Background(), discoverTimeout)
	defer cancel()
	h := hostFiles{files: []string{qemu}}
	dynamic, err := hasInterpreter(qemu)
	if err != nil {
		return hostFiles{}, err
	}
	var libs []string
	if dynamic {
		if libs, err = sharedLibraries(ctx, qemu); err != nil {
			return hostFiles{}, err
		}
	}
	h.files = append(h.files, libs...)
	for _, l := range libs {
		if !slices.Contains(loaderSearchDirs, filepath.Dir(l)) {
			h.files = append(h.files, ldCache)
			break
		}
	}

	// Firmware and option ROMs: QEMU's own data path (Debian adds seabios and ipxe to it).
	out, err := exec.CommandContext(ctx, qemu, "-L", "help").Output()
	if err != nil {
		return hostFiles{}, fmt.Errorf("ask %s for its firmware path (-L help): %w", qemu, err)
	}
	for _, d := range strings.Fields(string(out)) {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			h.dirs = append(h.dirs, filepath.Clean(d))
		}
	}
	// Modules (the TCG accelerator is one on Debian): QEMU looks next to its binary, as
	// <prefix>/lib/<triplet>/qemu, and in the configured module directory, the same on a
	// packaged QEMU.
	prefix := filepath.Dir(filepath.Dir(qemu))
	for _, l := range libs {
		if d := filepath.Join(prefix, "lib", filepath.Base(filepath.Dir(l)), "qemu"); isDir(d) && !slices.Contains(h.dirs, d) {
			h.dirs = append(h.dirs, d)
		}
	}
	for _, d := range []string{filepath.Join(prefix, "lib", "qemu"), filepath.Join(prefix, "lib64", "qemu")} {
		if isDir(d) && !slices.Contains(h.dirs, d) {
			h.dirs = append(h.dirs, d)
		}
	}
	return h, nil
}

// hasInterpreter reports whether the ELF binary at path is dynamically linked.
func hasInterpreter(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// sharedLibraries asks the dynamic loader which libraries qemu maps: with
// LD_TRACE_LOADED_OBJECTS it prints them and stops before QEMU's code runs.
func sharedLibraries(ctx context.Context, qemu string) ([]string, error) {
	cmd := exec.CommandContext(ctx, qemu)
	cmd.Env = []string{"LD_TRACE_LOADED_OBJECTS=1"}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("list the shared libraries of %s: %w", qemu, err)
	}
	libs, err := parseLoaderTrace(out)
	if err != nil {
		return nil, fmt.Errorf("list the shared libraries of %s: %w", qemu, err)
	}
	return libs, nil
}

// parseLoaderTrace reads the loader's list of libraries ("name => /path (0x...)", or
// "/path (0x...)" for the interpreter); the vDSO has no file.
func parseLoaderTrace(out []byte) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 4 && f[1] == "=>" && filepath.IsAbs(f[2]):
			libs = append(libs, f[2])
		case len(f) == 2 && filepath.IsAbs(f[0]):
			libs = append(libs, f[0])
		case len(f) >= 2 && f[1] == "=>" && strings.Contains(sc.Text(), "not found"):
			return nil, fmt.Errorf("library %s not found", f[0])
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("the loader listed no library: %q", out)
	}
	return libs, sc.Err()
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
