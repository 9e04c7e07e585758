// Package image builds a one-layer busybox container image offline, without a registry, as a
// tar that every client loads: it is both an OCI image layout (oci-layout, index.json, blobs/)
// and a docker-archive (manifest.json, repositories).
//
//	ctr -a SOCK images import FILE.tar   (containerd; the name becomes docker.io/NAME)
//	docker load -i FILE.tar
//	podman load -i FILE.tar
//
// The tar is reproducible: the same busybox gives the same digests.
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/runv-project/runv/test/bundle"
)

// DefaultName is the name the image gets when none is given.
const DefaultName = "runv-test/busybox:latest"

// Built describes a built image.
type Built struct {
	// Path is the tar file.
	Path string
	// Name is NAME:TAG as docker and podman show it (podman prefixes docker.io/).
	Name string
	// Qualified is the fully qualified name containerd gives it (docker.io/NAME:TAG).
	Qualified string
	// Manifest and Config are the digests (sha256:...).
	Manifest, Config string
}

// Busybox builds the image into out from Debian's static busybox (test/bundle.MakeRootfs).
// name is NAME[:TAG], DefaultName when empty.
func Busybox(out, name string) (*Built, error) { return busybox(out, name, []string{"sh"}) }

// Pause builds a busybox image whose command waits until it is told to stop (SIGTERM,
// SIGINT), as a Kubernetes pod's pause container does: CRI tests use it as the sandbox image.
func Pause(out, name string) (*Built, error) {
	return busybox(out, name, []string{"sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"})
}

func busybox(out, name string, cmd []string) (*Built, error) {
	if name == "" {
		name = DefaultName
	}
	repo, tag := name, "latest"
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		repo, tag = name[:i], name[i+1:]
	}
	work, err := os.MkdirTemp("", "runv-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := bundle.MakeRootfs(rootfs); err != nil {
		return nil, err
	}
	layer, err := tarDir(rootfs)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	blobs := map[string][]byte{}
	put := func(b []byte) (digest string, size int) {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		blobs[h] = b
		return "sha256:" + h, len(b)
	}
	layerDigest, layerSize := put(layer)
	epoch := "1970-01-01T00:00:00Z"
	config := map[string]any{
		"created": epoch, "architecture": "amd64", "os": "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd":        cmd,
			"WorkingDir": "/",
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		"history": []map[string]string{{"created": epoch, "created_by": "runv test/image (busybox-static)"}},
	}
	configDigest, configSize := put(mustJSON(config))
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []map[string]any{{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	}
	manifestDigest, manifestSize := put(mustJSON(manifest))
	qualified := qualify(repo) + ":" + tag
	index := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"annotations": map[string]string{"io.containerd.image.name": qualified, "org.opencontainers.image.ref.name": tag},
		}},
	}
	blobPath := func(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }
	dockerManifest := []map[string]any{{
		"Config": blobPath(configDigest), "RepoTags": []string{repo + ":" + tag}, "Layers": []string{blobPath(layerDigest)},
	}}
	repositories := map[string]map[string]string{repo: {tag: strings.TrimPrefix(layerDigest, "sha256:")}}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", mustJSON(index)},
		{"manifest.json", mustJSON(dockerManifest)},
		{"repositories", mustJSON(repositories)},
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, f.data); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(dirHeader(d, 0o755)); err != nil {
			return nil, err
		}
	}
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	for _, d := range digests {
		if err := writeFile(tw, "blobs/sha256/"+d, blobs[d]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	abs, _ := filepath.Abs(out)
	return &Built{Path: abs, Name: repo + ":" + tag, Qualified: qualified, Manifest: manifestDigest, Config: configDigest}, nil
}

// qualify gives repo the registry and namespace containerd assumes: docker.io/library/x for
// x, docker.io/ns/x for ns/x, unchanged when it names a registry.
func qualify(repo string) string {
	first, _, ok := strings.Cut(repo, "/")
	switch {
	case !ok:
		return "docker.io/library/" + repo
	case strings.ContainsAny(first, ".:") || first == "localhost":
		return repo
	default:
		return "docker.io/" + repo
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var epoch = time.Unix(0, 0).UTC()

func fileHeader(name string, size int64, mode int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: mode, ModTime: epoch, Format: tar.FormatPAX}
}

func dirHeader(name string, mode int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: epoch, Format: tar.FormatPAX}
}

func write(w io.Writer, b []byte) error {
	_, err := w.Write(b)
	return err
}

func writeFile(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(fileHeader(name, int64(len(b)), 0o644)); err != nil {
		return err
	}
	return write(tw, b)
}

// tarDir archives dir reproducibly: sorted names, owner root, epoch times, no
// access/change times.
func tarDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
