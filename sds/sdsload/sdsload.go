// Package sdsload measures how fast an SDS server fans a rotation out to
// many streams. It opens the streams, each behaving as Envoy does (its own
// connection, a subscription to "default", every response checked and
// acknowledged), causes rotations through a caller-supplied trigger, and
// times each one until the last stream has the new certificate.
package sdsload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// Config configures a Run. Zero values select the noted defaults.
type Config struct {
	// Socket is the SDS server's Unix socket. Required.
	Socket string
	// Streams is the number of concurrent streams. Default: 1000.
	Streams int
	// Connections is the number of gRPC connections the streams share.
	// Default: one per stream, as separate proxies would have.
	Connections int
	// Delta uses DeltaSecrets instead of StreamSecrets.
	Delta bool
	// Rotations is the number of rotations timed. Default: 5.
	Rotations int
	// Trigger causes one rotation. Required.
	Trigger func(ctx context.Context) error
	// Installed, if set, returns when the server's source took the
	// current certificate; the fan-out latency is measured from it.
	// Otherwise it is measured from the call to Trigger.
	Installed func(ctx context.Context) (time.Time, error)
	// Usage, if set, samples the server process's resident memory (bytes)
	// and CPU time (seconds) before and after the rotations.
	Usage func(ctx context.Context) (rssBytes, cpuSeconds float64, err error)
	// Timeout bounds the wait for one rotation to reach every stream.
	// Default: 60s.
	Timeout time.Duration
	// Settle is the pause between rotations. Default: 200ms.
	Settle time.Duration
}

// Rotation is the timing of one rotation.
type Rotation struct {
	// Triggered is when Trigger was called; Installed when the server's
	// source took the new certificate (Triggered if unknown).
	Triggered, Installed time.Time
	// First and Last are when the first and the last stream received it.
	First, Last time.Time
}

// FanOut is the time from installation to the last stream.
func (r Rotation) FanOut() time.Duration { return r.Last.Sub(r.Installed) }

// Result is what Run measured.
type Result struct {
	Streams   int
	Rotations []Rotation
	// Connect is the time to open every stream and receive the first
	// certificate on each.
	Connect time.Duration
	// RSSBefore and RSSAfter are the server's resident memory, in bytes,
	// before the first and after the last rotation (0 without Usage).
	RSSBefore, RSSAfter float64
	// CPUPerRotation is the server's CPU time over the rotations divided
	// by their number (0 without Usage).
	CPUPerRotation time.Duration
}

// FanOuts returns each rotation's fan-out time, sorted.
func (r Result) FanOuts() []time.Duration {
	out := make([]time.Duration, len(r.Rotations))
	for i, x := range r.Rotations {
		out[i] = x.FanOut()
	}
	slices.Sort(out)
	return out
}

// receipt is one certificate version arriving on one stream.
type receipt struct {
	stream  int
	version string
	at      time.Time
}

// Run opens the streams, waits until each holds a certificate, then times
// cfg.Rotations rotations.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Socket == "" || cfg.Trigger == nil {
		return Result{}, errors.New("sdsload: Socket and Trigger are required")
	}
	if cfg.Streams <= 0 {
		cfg.Streams = 1000
	}
	if cfg.Connections <= 0 || cfg.Connections > cfg.Streams {
		cfg.Connections = cfg.Streams
	}
	if cfg.Rotations <= 0 {
		cfg.Rotations = 5
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 200 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	clients := make([]*sdsclient.Client, cfg.Connections)
	for i := range clients {
		c, err := sdsclient.New(cfg.Socket)
		if err != nil {
			return Result{}, err
		}
		defer c.Close()
		clients[i] = c
	}

	receipts := make(chan receipt, cfg.Streams)
	errc := make(chan error, cfg.Streams)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	start := time.Now()
	for i := 0; i < cfg.Streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := follow(ctx, clients[i%len(clients)], i, cfg.Delta, receipts); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("sdsload: stream %d: %w", i, err)
			}
		}()
	}

	current := make([]string, cfg.Streams)
	// await waits until every stream holds a version other than old.
	await := func(old map[string]bool, timeout time.Duration) (first, last time.Time, version string, err error) {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		pending := 0
		for _, v := range current {
			if v == "" || old[v] {
				pending++
			}
		}
		for pending > 0 {
			select {
			case r := <-receipts:
				wasOld := current[r.stream] == "" || old[current[r.stream]]
				current[r.stream] = r.version
				if wasOld && !old[r.version] {
					pending--
					if first.IsZero() {
						first = r.at
					}
					last, version = r.at, r.version
				}
			case err := <-errc:
				return first, last, "", err
			case <-timer.C:
				return first, last, "", fmt.Errorf("sdsload: %d of %d streams did not receive the new certificate within %s", pending, cfg.Streams, timeout)
			case <-ctx.Done():
				return first, last, "", ctx.Err()
			}
		}
		return first, last, version, nil
	}

	res := Result{Streams: cfg.Streams}
	_, _, _, err := await(map[string]bool{}, cfg.Timeout)
	if err != nil {
		return res, err
	}
	res.Connect = time.Since(start)
	seen := map[string]bool{}
	for _, v := range current {
		seen[v] = true
	}
	if len(seen) != 1 {
		return res, fmt.Errorf("sdsload: streams started on %d different certificates; is a rotation in progress?", len(seen))
	}

	var cpu0 float64
	if cfg.Usage != nil {
		rss, cpu, err := cfg.Usage(ctx)
		if err != nil {
			return res, err
		}
		res.RSSBefore, cpu0 = rss, cpu
	}
	for i := 0; i < cfg.Rotations; i++ {
		time.Sleep(cfg.Settle)
		rot := Rotation{Triggered: time.Now()}
		if err := cfg.Trigger(ctx); err != nil {
			return res, fmt.Errorf("sdsload: trigger: %w", err)
		}
		var (
			version string
			err     error
		)
		rot.First, rot.Last, version, err = await(seen, cfg.Timeout)
		if err != nil {
			return res, err
		}
		seen[version] = true
		rot.Installed = rot.Triggered
		if cfg.Installed != nil {
			at, err := cfg.Installed(ctx)
			if err != nil {
				return res, err
			}
			if at.After(rot.Triggered) && !at.After(rot.First) {
				rot.Installed = at
			}
		}
		res.Rotations = append(res.Rotations, rot)
	}
	if cfg.Usage != nil {
		rss, cpu, err := cfg.Usage(ctx)
		if err != nil {
			return res, err
		}
		res.RSSAfter = rss
		res.CPUPerRotation = time.Duration((cpu - cpu0) / float64(cfg.Rotations) * float64(time.Second))
	}
	return res, nil
}

// follow runs one Envoy-like stream subscribed to "default" and reports
// each certificate version it accepts.
func follow(ctx context.Context, c *sdsclient.Client, id int, delta bool, out chan<- receipt) error {
	if delta {
		d, err := c.DeltaStream(ctx, nil)
		if err != nil {
			return err
		}
		defer d.Close()
		if err := d.Subscribe(sds.DefaultSecretName); err != nil {
			return err
		}
		for {
			r, err := d.Recv()
			if err != nil {
				return err
			}
			at := time.Now()
			if r.Invalid != nil {
				return r.Invalid
			}
			if err := d.ACK(r); err != nil {
				return err
			}
			if v, ok := r.Versions[sds.DefaultSecretName]; ok {
				out <- receipt{stream: id, version: v, at: at}
			}
		}
	}
	s, err := c.Stream(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Subscribe(sds.DefaultSecretName); err != nil {
		return err
	}
	for {
		r, err := s.Recv()
		if err != nil {
			return err
		}
		at := time.Now()
		if r.Invalid != nil {
			return r.Invalid
		}
		if err := s.ACK(r); err != nil {
			return err
		}
		if _, ok := r.Secrets[sds.DefaultSecretName]; ok {
			out <- receipt{stream: id, version: r.Version, at: at}
		}
	}
}
