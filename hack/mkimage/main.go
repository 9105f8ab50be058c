// Command mkimage writes an OCI image archive (the tar form of an OCI image
// layout) holding a few host files in one layer, so that images can be made
// and imported with `ctr images import` on a machine without a container
// engine or a registry.
//
//	mkimage -o out.tar -tag example.org/app:a -tag example.org/app:b \
//	    -entrypoint /app -user 65532 bin/app=/app
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	out := flag.String("o", "", "archive to write")
	entrypoint := flag.String("entrypoint", "", "image entrypoint (one path; arguments come from the Pod)")
	user := flag.String("user", "", "user the image runs as, e.g. 65532")
	var tags list
	flag.Var(&tags, "tag", "full image reference to name the image by (repeatable)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: mkimage -o OUT.tar -tag REF [-tag REF] [-entrypoint PATH] [-user UID] SRC=DST...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || len(tags) == 0 || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}

	img := Image{Tags: tags, User: *user}
	if *entrypoint != "" {
		img.Entrypoint = []string{*entrypoint}
	}
	for _, arg := range flag.Args() {
		src, dst, ok := strings.Cut(arg, "=")
		if !ok || src == "" || !strings.HasPrefix(dst, "/") {
			fmt.Fprintf(os.Stderr, "mkimage: %q is not SRC=/DST\n", arg)
			os.Exit(2)
		}
		img.Files = append(img.Files, File{Src: src, Dst: dst})
	}

	if err := writeFile(*out, img); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// writeFile writes the archive next to out and renames it into place, so a
// failed run never leaves a half archive that looks usable.
func writeFile(out string, img Image) error {
	f, err := os.CreateTemp(filepath.Dir(out), ".mkimage-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := Write(f, img); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}
