// Package certdir writes a workload's certificate chain, private key and
// trust bundle into a directory so that the three always change together.
//
// Each version goes into a new hidden directory; the link "..data" is then
// swapped to it in one rename, the way Kubernetes updates projected volumes.
// The names a workload reads are links through "..data":
//
//	dir/cert-chain.pem -> ..data/cert-chain.pem
//	dir/key.pem        -> ..data/key.pem        (mode 0600)
//	dir/root-cert.pem  -> ..data/root-cert.pem
//	dir/..data         -> ..2026_01_02_15_04_05.000000001.123456
//
// A file is never rewritten in place, so a reader never sees a partial
// file, and a reader that resolves "..data" once (as Read does) always gets
// a key and a certificate that belong together. The previous version is
// kept until the next write, so that a reader that resolved "..data" just
// before a swap can finish reading.
//
// Those are the names of IstioLayout. IstiodLayout names the files as
// istiod reads its serving certificate from /var/run/secrets/istiod/tls:
// tls.crt, tls.key and ca.crt.
package certdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The file names written, as Istio's agent names them.
const (
	ChainFile = "cert-chain.pem"
	KeyFile   = "key.pem"
	RootFile  = "root-cert.pem"
)

// Layout names the three files of a directory.
type Layout struct {
	// Chain holds the certificate chain, leaf first.
	Chain string
	// Key holds the private key (mode 0600).
	Key string
	// Root holds the trust bundle.
	Root string
}

// The layouts ParseLayout knows.
var (
	// IstioLayout is what Istio's agent writes (OUTPUT_CERTS):
	// cert-chain.pem, key.pem, root-cert.pem. The zero Layout means it.
	IstioLayout = Layout{Chain: ChainFile, Key: KeyFile, Root: RootFile}
	// IstiodLayout is what istiod reads its serving certificate from when
	// its own CA is off (/var/run/secrets/istiod/tls): tls.crt, tls.key,
	// ca.crt.
	IstiodLayout = Layout{Chain: "tls.crt", Key: "tls.key", Root: "ca.crt"}
)

// ParseLayout returns the layout named "istio" (or "") or "istiod".
func ParseLayout(name string) (Layout, error) {
	switch name {
	case "", "istio":
		return IstioLayout, nil
	case "istiod":
		return IstiodLayout, nil
	}
	return Layout{}, fmt.Errorf("certdir: unknown layout %q: want istio (cert-chain.pem, key.pem, root-cert.pem) or istiod (tls.crt, tls.key, ca.crt)", name)
}

func (l Layout) orDefault() Layout {
	if l == (Layout{}) {
		return IstioLayout
	}
	return l
}

// dataLink is the link swapped on each write.
const dataLink = "..data"

// versionPrefix starts the name of every version directory.
const versionPrefix = ".."

// Files is one version of the directory's content, all PEM. Chain and Key
// are both empty in a version that holds no certificate (the last one
// expired): cert-chain.pem and key.pem are then absent, and a reader gets
// "no such file" rather than an expired certificate.
type Files struct {
	Chain []byte
	Key   []byte
	Root  []byte
}

// HasCertificate reports whether f holds a chain and its key.
func (f Files) HasCertificate() bool { return len(f.Chain) > 0 }

// Write makes files the content of dir in IstioLayout; see WriteLayout.
func Write(dir string, files Files) error { return WriteLayout(dir, IstioLayout, files) }

// WriteLayout makes files the content of dir, named as l says, creating
// dir (mode 0755) if needed. The key file has mode 0600 and the others
// 0644. Versions older than the previous one are removed.
func WriteLayout(dir string, l Layout, files Files) error {
	l = l.orDefault()
	if len(files.Root) == 0 {
		return errors.New("certdir: root must be present")
	}
	if (len(files.Chain) == 0) != (len(files.Key) == 0) {
		return errors.New("certdir: chain and key go together: both or neither")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("certdir: could not create %s: %w", dir, err)
	}
	stamp := versionPrefix + time.Now().UTC().Format("2006_01_02_15_04_05.000000000") + "."
	version, err := os.MkdirTemp(dir, stamp)
	if err != nil {
		return fmt.Errorf("certdir: could not create a version directory in %s: %w", dir, err)
	}
	if err := writeVersion(version, l, files); err != nil {
		os.RemoveAll(version)
		return err
	}
	previous, _ := os.Readlink(filepath.Join(dir, dataLink))
	if err := replaceLink(dir, dataLink, filepath.Base(version)); err != nil {
		os.RemoveAll(version)
		return err
	}
	for _, name := range []string{l.Chain, l.Key, l.Root} {
		target := filepath.Join(dataLink, name)
		if cur, err := os.Readlink(filepath.Join(dir, name)); err == nil && cur == target {
			continue
		}
		if err := replaceLink(dir, name, target); err != nil {
			return err
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	return prune(dir, filepath.Base(version), previous)
}

// Read returns the current content of dir in IstioLayout; see ReadLayout.
func Read(dir string) (Files, error) { return ReadLayout(dir, IstioLayout) }

// ReadLayout returns the current content of dir, named as l says, all from
// one version; Chain and Key are empty if that version holds no
// certificate. If the version is removed while it is being read (two
// writes happened during the read), ReadLayout starts again with the new
// one.
func ReadLayout(dir string, l Layout) (Files, error) {
	l = l.orDefault()
	var err error
	for range 5 {
		var f Files
		if f, err = readOnce(dir, l); !errors.Is(err, os.ErrNotExist) {
			return f, err
		}
	}
	return Files{}, err
}

func readOnce(dir string, l Layout) (Files, error) {
	link := filepath.Join(dir, dataLink)
	version, err := filepath.EvalSymlinks(link)
	if err != nil {
		return Files{}, fmt.Errorf("certdir: %s holds no written version: %w", dir, err)
	}
	var (
		f       Files
		missing []string
	)
	for _, x := range []struct {
		name string
		dst  *[]byte
	}{{l.Chain, &f.Chain}, {l.Key, &f.Key}, {l.Root, &f.Root}} {
		b, err := os.ReadFile(filepath.Join(version, x.name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, x.name)
		case err != nil:
			return Files{}, fmt.Errorf("certdir: %w", err)
		}
		*x.dst = b
	}
	if len(missing) == 0 {
		return f, nil
	}
	// A version is never removed while it is current: if "..data" still
	// names it, the files are missing by design; if not, it was removed
	// during the read and the caller reads again.
	if now, err := filepath.EvalSymlinks(link); err != nil || now != version {
		return Files{}, fmt.Errorf("certdir: %s changed during the read: %w", dir, os.ErrNotExist)
	}
	if slices.Contains(missing, l.Root) || len(missing) != 2 {
		return Files{}, fmt.Errorf("certdir: %s lacks %s", version, strings.Join(missing, " and "))
	}
	return f, nil
}

func writeVersion(version string, l Layout, files Files) error {
	if err := os.Chmod(version, 0o755); err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	for _, x := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{l.Chain, files.Chain, 0o644}, {l.Key, files.Key, 0o600}, {l.Root, files.Root, 0o644}} {
		if len(x.data) == 0 {
			continue
		}
		if err := writeFile(filepath.Join(version, x.name), x.data, x.mode); err != nil {
			return err
		}
	}
	return syncDir(version)
}

// writeFile creates path with mode (never wider, whatever the umask) and
// flushes it to disk.
func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("certdir: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("certdir: could not write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("certdir: could not sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	return nil
}

// replaceLink makes dir/name a symbolic link to target in one rename.
func replaceLink(dir, name, target string) error {
	tmp := filepath.Join(dir, name+".tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("certdir: could not swap %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// prune removes version directories other than current and previous.
func prune(dir, current, previous string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() || !strings.HasPrefix(n, versionPrefix) || n == dataLink || n == current || n == previous {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("certdir: could not remove old versions: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("certdir: could not sync %s: %w", dir, err)
	}
	return nil
}
