package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Media types of the OCI image spec; containerd imports all of them.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// Image is what goes into one archive: one layer of host files, named by
// every tag (all tags share one manifest, so they are the same build).
type Image struct {
	Tags       []string
	Files      []File
	Entrypoint []string
	User       string
}

// File copies the host file Src (symlinks followed) to Dst in the image.
type File struct{ Src, Dst string }

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// emptyDirs exist in every image: runtimes mount over /proc, /sys and /dev,
// and programs expect a writable /tmp.
var emptyDirs = map[string]int64{"/dev": 0o755, "/etc": 0o755, "/proc": 0o755, "/sys": 0o755, "/tmp": 0o1777}

// Write writes the image as an OCI layout tar to w. The output depends only
// on the files' contents and modes (no timestamps), so equal inputs give
// equal digests.
func Write(w io.Writer, img Image) error {
	layer, err := layerTar(img.Files)
	if err != nil {
		return err
	}
	config := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": img.Entrypoint,
			"Env":        []string{"PATH=/usr/local/bin:/usr/bin:/bin:/"},
			"User":       img.User,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digest(layer)}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        describe(mediaConfig, configJSON),
		"layers":        []descriptor{describe(mediaLayer, layer)},
	})
	if err != nil {
		return err
	}

	var manifests []descriptor
	for _, ref := range img.Tags {
		tag, err := tagOf(ref)
		if err != nil {
			return err
		}
		d := describe(mediaManifest, manifest)
		d.Annotations = map[string]string{
			"io.containerd.image.name":          ref,
			"org.opencontainers.image.ref.name": tag,
		}
		d.Platform = &platform{Architecture: runtime.GOARCH, OS: "linux"}
		manifests = append(manifests, d)
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": manifests})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(header(tar.TypeDir, dir, 0o755, 0)); err != nil {
			return err
		}
	}
	for _, blob := range [][]byte{layer, configJSON, manifest} {
		if err := addFile(tw, "blobs/sha256/"+strings.TrimPrefix(digest(blob), "sha256:"), 0o644, blob); err != nil {
			return err
		}
	}
	if err := addFile(tw, "oci-layout", 0o644, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := addFile(tw, "index.json", 0o644, index); err != nil {
		return err
	}
	return tw.Close()
}

// layerTar is the uncompressed layer: the files, their parent folders and
// the emptyDirs, owned by root.
func layerTar(files []File) ([]byte, error) {
	dirs := map[string]int64{}
	for d, mode := range emptyDirs {
		dirs[d] = mode
	}
	for _, f := range files {
		for d := path.Dir(path.Clean(f.Dst)); d != "/"; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = 0o755
			}
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	slices.Sort(names) // parents sort before their children
	for _, d := range names {
		if err := tw.WriteHeader(header(tar.TypeDir, d[1:]+"/", dirs[d], 0)); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, err
		}
		if err := addFile(tw, path.Clean(f.Dst)[1:], int64(st.Mode().Perm()), data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(header(tar.TypeReg, name, mode, len(data))); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// header has a fixed time and owner so that archives are reproducible.
func header(typ byte, name string, mode int64, size int) *tar.Header {
	return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: int64(size), ModTime: time.Unix(0, 0)}
}

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func describe(mediaType string, b []byte) descriptor {
	return descriptor{MediaType: mediaType, Digest: digest(b), Size: len(b)}
}

// tagOf returns the tag of a full reference ("repo/name:tag" -> "tag"); a
// reference without one is refused because containerd would not name it.
func tagOf(ref string) (string, error) {
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || strings.Contains(ref[i:], "/") || i == len(ref)-1 {
		return "", fmt.Errorf("image reference %q has no tag", ref)
	}
	return ref[i+1:], nil
}
