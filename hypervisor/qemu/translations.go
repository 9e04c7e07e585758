package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"github.com/runv-project/runv/hypervisor"
)

// A template clone's QEMU starts with no translated code: under TCG it translated the
// guest's paths of its first pod anew, ~28 000 blocks, nine in ten of them byte for byte
// what the template's QEMU had translated during its warm-up (docs/performance.md,
// "Translations restored into template clones"). runv's QEMU
// (qemu-build/patches/0002-tcg-translation-snapshot.patch) saves the template's
// translations beside its device state and restores them into each clone before its vCPU
// first runs:
//
//   - x-tb-snapshot-save=FILE on the template's TCG accelerator: a stop marks where the
//     translations to keep start (BeginWarmup: stop and cont just before the warm-up), and
//     the stop that completes the migration writes them to FILE;
//   - x-tb-snapshot-load=FILE on a clone's: restored after the device state loads, before
//     the guest runs. A file that does not fit (another binary, say) is refused with a
//     warning in the clone's qemu.log, and the clone translates as usual.
//
// Both take the file as a descriptor QEMU inherits (-add-fd): QEMU's jail needs no path to it.
// A snapshot is of the one code region a single translating thread uses: templates of
// more than one vCPU are saved without one.

// translationsUse says what a VM does with translations.
type translationsUse int

const (
	noTranslations translationsUse = iota
	saveTranslations
	saveBootTranslations
	loadTranslations
)

const (
	translationsSaveProp       = "x-tb-snapshot-save"
	translationsSaveOnStopProp = "x-tb-snapshot-save-on-stop"
	translationsLoadProp       = "x-tb-snapshot-load"
)

// args returns the -add-fd and -accel arguments of u, or nil (no -accel: -machine names the
// accelerator). The file is the launch's first extra file, or a clone's second (after its
// device state).
func (u translationsUse) args(incoming bool) []string {
	fd := translationsFD
	if incoming {
		fd = cloneTranslationsFD
	}
	n := strconv.Itoa(fd)
	file := "=/dev/fdset/" + n
	var props string
	switch u {
	case saveTranslations:
		props = translationsSaveProp + file
	case saveBootTranslations:
		props = translationsSaveProp + file + "," + translationsSaveOnStopProp + "=on"
	case loadTranslations:
		props = translationsLoadProp + file
	default:
		return nil
	}
	return []string{"-add-fd", "fd=" + n + ",set=" + n, "-accel", hypervisor.AccelTCG + "," + props}
}

// stopAndContinue stops the VM and lets it run on: the stop is where runv's QEMU saves,
// or marks the start of, the translations (x-tb-snapshot-save).
func (v *vm) stopAndContinue(ctx context.Context) error {
	for _, command := range []string{"stop", "cont"} {
		if err := v.qmp(ctx, command, nil, nil); err != nil {
			return fmt.Errorf("%s: %w", command, err)
		}
	}
	return nil
}

// translationsAnswers caches savesTranslations' probe per QEMU binary.
var translationsAnswers sync.Map

// savesTranslations reports whether qemu's TCG accelerator has the translation snapshot
// properties. It asks a QEMU that starts with one set and quits at once over QMP on its
// stdin: another QEMU (Debian's) exits saying that the property is not found.
func savesTranslations(ctx context.Context, qemu string) (bool, error) {
	if v, ok := translationsAnswers.Load(qemu); ok {
		return v.(bool), nil
	}
	cmd := exec.CommandContext(ctx, qemu, "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-accel", hypervisor.AccelTCG+","+translationsLoadProp+"="+os.DevNull, "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}{"execute":"quit"}`)
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil:
		translationsAnswers.Store(qemu, true)
		return true, nil
	case strings.Contains(string(out), translationsLoadProp) && strings.Contains(string(out), "not found"):
		translationsAnswers.Store(qemu, false)
		return false, nil
	}
	return false, fmt.Errorf("probe %s for %s: %w: %s", qemu, translationsLoadProp, err, strings.TrimSpace(string(out)))
}

// translationsUnfit says why a VM of cfg under accel can have no translations, or "".
func translationsUnfit(cfg hypervisor.Config, accel string) string {
	switch {
	case accel != hypervisor.AccelTCG:
		return "not under TCG"
	case max(cfg.CPUs, cfg.MaxCPUs) > 1:
		return "more than one vCPU" // one translation context only
	}
	return ""
}

// canSaveTranslations reports whether a template of cfg under accel can have translations
// saved, and why not.
func canSaveTranslations(ctx context.Context, cfg hypervisor.Config, accel string) (bool, string, error) {
	if why := translationsUnfit(cfg, accel); why != "" {
		return false, why, nil
	}
	ok, err := savesTranslations(ctx, cfg.QEMU)
	if err != nil || !ok {
		return false, "QEMU has no " + translationsSaveProp + " (not runv's build)", err
	}
	return true, "", nil
}
