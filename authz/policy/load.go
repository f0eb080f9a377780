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
		data, err := readLimited(f, MaxInputSize)
		if err != nil {
			errs = append(errs, &Error{Origin: Origin{File: f}, Err: err})
			continue
		}
		rs, err := Decode(data, f)
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

func readLimited(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("file is larger than the limit of %d bytes", limit)
	}
	return data, nil
}
