package xds

import "time"

// SetCheckEvery sets how often f looks at its files, so that a test need
// not wait a second for a rewrite to be seen.
func SetCheckEvery(f *FileCredentials, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkEvery = d
}
