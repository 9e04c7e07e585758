// Command initrd writes the runv guest initramfs: an uncompressed newc cpio whose /init is
// the static runv-agent, with the static exec helper (cmd/runv-exec) at
// /libexec/runv/runv-exec, a directory the agent mounts read-only at boot. Uncompressed
// because under TCG decompressing costs more boot time than reading the larger image.
//
//	go run ./initrd -agent build/runv-agent -exec build/runv-exec -o build/initrd.cpio
//
// Without -exec the guest runs every exec through libcontainer's `runc init`. The output is
// reproducible: the same binaries give byte-identical archives.
package main

import (
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/u-root/u-root/pkg/cpio"
)

func main() {
	agent := flag.String("agent", "", "path of the static runv-agent binary (becomes /init)")
	helper := flag.String("exec", "", "path of the static exec helper (becomes /libexec/runv/runv-exec; optional)")
	out := flag.String("o", "", "output cpio path")
	flag.Parse()
	if *agent == "" || *out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: initrd -agent PATH [-exec PATH] -o OUT")
		os.Exit(2)
	}
	if err := build(*agent, *helper, *out); err != nil {
		fmt.Fprintln(os.Stderr, "initrd:", err)
		os.Exit(1)
	}
}

// records lists the archive's entries. "." comes first and explicitly 0755: the kernel
// gives "/" the mode of the archive's "." (u-root's WriteRecordsAndDirs would add it as
// 0777, a world-writable root). /dev/console must exist in the archive itself, or the
// kernel starts init without fds 0-2. The other directories are mount points the agent
// would otherwise create at boot.
func records(agent, helper []byte) []cpio.Record {
	rs := []cpio.Record{
		cpio.Directory(".", 0o755),
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Directory("proc", 0o555),
		cpio.Directory("sys", 0o555),
		cpio.Directory("run", 0o755),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("etc", 0o755),
		cpio.Directory("newroot", 0o755),
		cpio.StaticRecord(agent, cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755}),
	}
	if helper != nil {
		rs = append(rs,
			cpio.Directory("libexec", 0o755),
			cpio.Directory("libexec/runv", 0o755),
			cpio.StaticRecord(helper, cpio.Info{Name: "libexec/runv/runv-exec", Mode: cpio.S_IFREG | 0o755}))
	}
	cpio.MakeAllReproducible(rs)
	return rs
}

func build(agentPath, helperPath, out string) (err error) {
	agent, err := readStatic(agentPath, "-extldflags -static")
	if err != nil {
		return err
	}
	var helper []byte
	if helperPath != "" {
		if helper, err = readStatic(helperPath, "cc -static"); err != nil {
			return err
		}
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, records(agent, helper)); err != nil {
		return err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	// Write beside the target and rename, so a reader never sees half an initramfs.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".initrd-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, &buf); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}

// readStatic reads a binary for the initramfs, which must be a static executable.
func readStatic(path, how string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %w", err)
	}
	if !isStaticELF(b) {
		return nil, fmt.Errorf("%s is not a static ELF executable (build it with %s): the initramfs has no libc", path, how)
	}
	return b, nil
}

// isStaticELF reports whether b is an ELF executable without a program interpreter
// (a dynamic one cannot run: the initramfs has no libc).
func isStaticELF(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
