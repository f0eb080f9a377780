package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Load reads policies from path: a file, or a directory whose .yaml, .yml
// and .json files are read recursively in lexical order. It returns every
// valid resource and an error joining the problems found; one bad document
// does not stop the others from loading. Two resources with the same kind,
// namespace and name are an error; the first one read is kept.
func Load(path string) ([]*Resource, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var files []string
	if !info.IsDir() {
		files = []string{path}
	} else {
		err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if p != path && strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir // .git and the like
				}
				return nil
			}
			switch strings.ToLower(filepath.Ext(p)) {
			case ".yaml", ".yml", ".json":
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("policy: reading %s: %w", path, err)
		}
	}
	var (
		out  []*Resource
		errs []error
		seen = map[Key]Origin{}
	)
	for _, f := range files {
		rs, err := readFile(f)
		if err != nil {
			errs = append(errs, err)
		}
		for _, r := range rs {
			if prev, dup := seen[r.Key()]; dup {
				errs = append(errs, &Error{Origin: r.Origin, Kind: r.Kind, Namespace: r.Meta.Namespace, Name: r.Meta.Name,
					Err: fmt.Errorf("duplicate of the resource at %s; keeping the first", prev)})
				continue
			}
			seen[r.Key()] = r.Origin
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

// Read decodes the resources of the YAML or JSON stream r (stdin, say),
// named source in errors and origins. It reads at most MaxInputSize bytes
// and one more: a longer stream is refused, as Decode refuses that input.
func Read(r io.Reader, source string) ([]*Resource, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxInputSize+1))
	if err != nil {
		return nil, &Error{Origin: Origin{File: source}, Err: err}
	}
	return Decode(data, source)
}

func readFile(name string) ([]*Resource, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, &Error{Origin: Origin{File: name}, Err: err}
	}
	defer f.Close()
	return Read(f, name)
}
