package supervisor

import "testing"

func TestVolumeName(t *testing.T) {
	for src, want := range map[string]string{
		"/etc": "etc", "/var/lib/data/": "data", "/": "root", "/a/b/../c": "c", "/x/file.conf": "file.conf",
	} {
		if got := volumeName(src); got != want {
			t.Errorf("volumeName(%q) = %q, want %q", src, got, want)
		}
	}
}
