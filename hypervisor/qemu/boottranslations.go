package qemu

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// A direct boot under TCG translates what every boot of the same kernel and initrd
// translated before it: ~70 000 blocks until a pod's program ran. runv keeps the code one
// boot translated (translations.go) and every later boot of the same kind restores it:
// the blocks whose guest code the RAM holds when the VM starts (the kernel's, boot code
// included; not the agent's, which the kernel unpacks later), ~43 000 of ~55 000 of a
// bare boot's, which then reaches /init in ~360 ms instead of ~500 (docs/performance.md,
// "Boot translations for direct pods, stop 24").
//
// The code of a boot is saved once its agent answered (SaveBootTranslations, called by
// the pod's supervisor or a pool's holder after READY), before the guest runs anything of a pod: QEMU writes
// the file at a stop and closes it, and never has it again. So the only code in the file
// is QEMU's own translation of runv's kernel and agent. Files live in
// Launcher.TranslationsDir, named by a hash of the boot's facts (bootKey); a boot whose
// QEMU cannot save them leaves a ".none" marker, so that its kind is not probed again.

const (
	// EnvTranslationsDir overrides DefaultTranslationsDir.
	EnvTranslationsDir = "RUNV_TRANSLATIONS_DIR"
	// DefaultTranslationsDir is on tmpfs, as the accelerator's verdict: the files are read
	// at every boot and must not be paged out (~30 MiB each).
	DefaultTranslationsDir = "/run/runv-translations"
	// keptBootTranslations is how many boots' files a directory keeps: the newest.
	keptBootTranslations = 4
)

func (l *Launcher) translationsDir() string {
	return cmp.Or(l.TranslationsDir, os.Getenv(EnvTranslationsDir), DefaultTranslationsDir)
}

// pendingBootSave is a boot's translations file that QEMU writes at its first stop: an
// unnamed file in the directory (O_TMPFILE), linked in under its name once written, so
// that a boot that never saves, or whose launcher is killed, leaves nothing behind.
type pendingBootSave struct {
	file  *os.File // runv's own descriptor of it (QEMU inherits another)
	final string
}

// bootTranslations decides what a direct boot does with translations: restore an earlier
// boot's, save its own, or nothing. It never fails the launch: translations only save time.
func (ln *launch) bootTranslations(ctx context.Context) error {
	if translationsUnfit(ln.cfg, ln.accel) != "" || len(ln.cfg.KernelParams) > 0 {
		// A boot with parameters of its own (a pod's) neither uses nor writes the files of
		// runv's.
		return nil
	}
	dir := ln.l.translationsDir()
	key, err := ln.bootKey()
	if err != nil {
		ln.log.Debug("boot translations: no key", "error", err)
		return nil
	}
	final := filepath.Join(dir, key+".tb")
	if f, err := os.Open(final); err == nil {
		ln.extraFiles = append(ln.extraFiles, f)
		ln.translations = loadTranslations
		return nil
	}
	none := filepath.Join(dir, key+".none")
	if _, err := os.Stat(none); err == nil {
		return nil
	}
	ok, err := savesTranslations(ctx, ln.cfg.QEMU)
	if err != nil {
		ln.log.Warn("boot translations: probe failed", "error", err)
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		ln.log.Warn("boot translations: no directory", "error", err)
		return nil
	}
	if !ok {
		os.WriteFile(none, nil, 0o600)
		return nil
	}
	f, err := os.OpenFile(dir, unix.O_TMPFILE|os.O_WRONLY, 0o600)
	if err != nil {
		ln.log.Warn("boot translations: cannot create the file to save them in", "dir", dir, "error", err)
		return nil
	}
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		f.Close()
		return nil
	}
	ln.extraFiles = append(ln.extraFiles, f) // closed once QEMU has it
	ln.translations = saveBootTranslations
	ln.bootSave = &pendingBootSave{file: os.NewFile(uintptr(fd), final), final: final}
	return nil
}

// bootKey names the boots whose code is the same: the same QEMU, kernel and initrd files,
// and the same command line but for what is the VM's own (its name and paths).
func (ln *launch) bootKey() (string, error) {
	h := sha256.New()
	for _, path := range []string{ln.cfg.QEMU, ln.cfg.Kernel, ln.cfg.Initrd} {
		st, err := os.Stat(path)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00", path, st.Size(), st.ModTime().UnixNano())
	}
	s := spec{cfg: ln.cfg, accel: ln.accel, nics: NICSlots, inheritSockets: true}
	for _, arg := range buildArgs(s) {
		for _, own := range []string{ln.cfg.Dir, ln.cfg.ShareDir, ln.cfg.ID} {
			if own != "" {
				arg = strings.ReplaceAll(arg, own, "\x01")
			}
		}
		fmt.Fprintf(h, "%s\x00", arg)
	}
	return hex.EncodeToString(h.Sum(nil))[:24], nil
}

// SaveBootTranslations saves the code QEMU translated for this boot so far, for later boots
// of the same kind (boottranslations.go). The supervisor calls it once the agent answered,
// before the guest runs anything of a pod; it does nothing for a VM that does not save.
// The guest stops for the save (~20 ms, once per kind of boot).
func (v *vm) SaveBootTranslations(ctx context.Context) error {
	v.mu.Lock()
	s := v.bootSave
	v.bootSave = nil
	v.mu.Unlock()
	if s == nil {
		return nil
	}
	defer s.file.Close()
	ctx, cancel := context.WithTimeout(ctx, quitTimeout)
	defer cancel()
	if err := v.stopAndContinue(ctx); err != nil {
		return fmt.Errorf("vm %s: save boot translations: %w", v.cfg.ID, err)
	}
	if st, err := s.file.Stat(); err != nil || st.Size() == 0 {
		return fmt.Errorf("vm %s: qemu saved no boot translations (see %s)", v.cfg.ID, v.paths.QEMULog)
	}
	// Another boot of the kind may have saved first: its file stays.
	err := unix.Linkat(int(s.file.Fd()), "", unix.AT_FDCWD, s.final, unix.AT_EMPTY_PATH)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("vm %s: save boot translations as %s: %w", v.cfg.ID, s.final, err)
	}
	pruneBootTranslations(filepath.Dir(s.final), keptBootTranslations)
	return nil
}

// dropBootSave lets a boot's translations file that was never saved go: it has no name.
func (v *vm) dropBootSave() {
	v.mu.Lock()
	s := v.bootSave
	v.bootSave = nil
	v.mu.Unlock()
	if s != nil {
		s.file.Close()
	}
}

// pruneBootTranslations keeps the keep newest boot translations files of dir: a new kernel,
// initrd or QEMU makes new ones, and the old ones would stay on tmpfs.
func pruneBootTranslations(dir string, keep int) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type file struct {
		path  string
		mtime int64
	}
	var files []file
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".tb") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		files = append(files, file{filepath.Join(dir, e.Name()), info.ModTime().UnixNano()})
	}
	slices.SortFunc(files, func(a, b file) int { return int(b.mtime - a.mtime) })
	for _, f := range files[min(keep, len(files)):] {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
	}
}
