package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTar returns the regular files of a tar by name, and every entry's mode.
func readTar(t *testing.T, b []byte) (files map[string][]byte, modes map[string]int64) {
	t.Helper()
	files, modes = map[string][]byte{}, map[string]int64{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, modes
		}
		if err != nil {
			t.Fatal(err)
		}
		modes[h.Name] = h.Mode
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = data
		}
	}
}

// blob returns the blob a descriptor names, checking its digest and size.
func blob(t *testing.T, files map[string][]byte, d descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	if digest(b) != d.Digest || len(b) != d.Size {
		t.Fatalf("blob %s: digest %s size %d, descriptor says size %d", d.Digest, digest(b), len(b), d.Size)
	}
	return b
}

func TestWriteOCIArchive(t *testing.T) {
	dir := t.TempDir()
	server := filepath.Join(dir, "server")
	lib := filepath.Join(dir, "libx.so")
	if err := os.WriteFile(server, []byte("#!binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lib, []byte("library"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "libx.so.1")
	if err := os.Symlink(lib, link); err != nil {
		t.Fatal(err)
	}
	img := Image{
		Tags:       []string{"example.org/app:a", "example.org/app:b"},
		Files:      []File{{Src: server, Dst: "/server"}, {Src: link, Dst: "/usr/lib/libx.so.1"}},
		Entrypoint: []string{"/server"},
		User:       "65532",
	}
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, buf.Bytes())

	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 2 {
		t.Fatalf("index has %d manifests, want one per tag", len(index.Manifests))
	}
	for i, want := range []struct{ name, tag string }{{"example.org/app:a", "a"}, {"example.org/app:b", "b"}} {
		a := index.Manifests[i].Annotations
		if a["io.containerd.image.name"] != want.name || a["org.opencontainers.image.ref.name"] != want.tag {
			t.Errorf("manifest %d annotations %v, want name %s tag %s", i, a, want.name, want.tag)
		}
	}
	if index.Manifests[0].Digest != index.Manifests[1].Digest {
		t.Error("tags of one build must name the same manifest")
	}

	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(blob(t, files, index.Manifests[0]), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		Config struct {
			Entrypoint []string
			User       string
			Env        []string
		}
		Rootfs struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(blob(t, files, manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}
	layer := blob(t, files, manifest.Layers[0])
	if len(config.Rootfs.DiffIDs) != 1 || config.Rootfs.DiffIDs[0] != digest(layer) {
		t.Errorf("diff_ids %v, want the uncompressed layer digest %s", config.Rootfs.DiffIDs, digest(layer))
	}
	if strings.Join(config.Config.Entrypoint, " ") != "/server" || config.Config.User != "65532" {
		t.Errorf("config %+v", config.Config)
	}

	layerFiles, modes := readTar(t, layer)
	if string(layerFiles["server"]) != "#!binary" || modes["server"] != 0o755 {
		t.Errorf("server: %q mode %o", layerFiles["server"], modes["server"])
	}
	if string(layerFiles["usr/lib/libx.so.1"]) != "library" {
		t.Errorf("symlink source not followed: %q", layerFiles["usr/lib/libx.so.1"])
	}
	for _, d := range []string{"usr/", "usr/lib/", "proc/", "dev/", "sys/"} {
		if _, ok := modes[d]; !ok {
			t.Errorf("folder %s missing from layer", d)
		}
	}
	if modes["tmp/"] != 0o1777 {
		t.Errorf("tmp/ mode %o, want 1777", modes["tmp/"])
	}

	var again bytes.Buffer
	if err := Write(&again, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds of the same input differ")
	}
}

func TestWriteRefusesUntaggedReference(t *testing.T) {
	for _, ref := range []string{"example.org/app", "localhost:5000/app", "app:"} {
		if err := Write(io.Discard, Image{Tags: []string{ref}}); err == nil {
			t.Errorf("%q: no error", ref)
		}
	}
}
