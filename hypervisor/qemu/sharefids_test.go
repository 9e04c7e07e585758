package qemu

import "testing"

func TestHasDeviceProperty(t *testing.T) {
	// As QEMU 7.2 prints `-device virtio-9p-device,help` (runv's build, then Debian's).
	const runvs = `virtio-9p-device options:
  any_layout=<bool>      - on/off (default: true)
  fsdev=<str>
  mount_tag=<str>
  x-migrate-fids=<bool>  -  (default: false)
`
	const debians = `virtio-9p-device options:
  fsdev=<str>
  mount_tag=<str>
`
	for _, tc := range []struct {
		name, help, prop string
		want             bool
	}{
		{"runv's build", runvs, shareFidsProp, true},
		{"Debian's", debians, shareFidsProp, false},
		{"a prefix is not the property", runvs, "x-migrate", false},
		{"empty help", "", shareFidsProp, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasDeviceProperty(tc.help, tc.prop); got != tc.want {
				t.Errorf("hasDeviceProperty(%q) = %v, want %v", tc.prop, got, tc.want)
			}
		})
	}
}

func TestKeepShareProp(t *testing.T) {
	if got := keepShareProp(true); got != ",x-migrate-fids=on" {
		t.Errorf("keepShareProp(true) = %q", got)
	}
	if got := keepShareProp(false); got != "" {
		t.Errorf("keepShareProp(false) = %q", got)
	}
}
