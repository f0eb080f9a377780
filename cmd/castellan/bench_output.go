package main

import (
	"time"

	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/sds/sdsload"
)

// The structured results of "castellan bench ... -o json|yaml". Times are
// in seconds, as Prometheus writes them; a figure that was not measured is
// left out.

// benchCAResult is the result of "castellan bench ca".
type benchCAResult struct {
	Requests     int            `json:"requests"`
	Errors       int            `json:"errors"`
	ErrorsByCode map[string]int `json:"errorsByCode,omitempty"`
	Seconds      float64        `json:"seconds"`
	PerSecond    float64        `json:"perSecond"`
	Concurrency  int            `json:"concurrency"`
	Connections  int            `json:"connections"`
	PacedRate    int            `json:"pacedRate,omitempty"`
	Latency      latencyResult  `json:"latencySeconds"`
	TokenReviews *float64       `json:"tokenReviews,omitempty"`
	// Per CSR, in seconds of CPU.
	ClientCPUPerCSR float64  `json:"clientCPUPerCSRSeconds"`
	CACPUPerCSR     *float64 `json:"caCPUPerCSRSeconds,omitempty"`
	// The crypto floor (one P-256 verify and one sign) and the CA's CPU
	// per SVID over it.
	FloorSeconds *float64 `json:"floorSeconds,omitempty"`
	FloorCPUs    string   `json:"floorCPUs,omitempty"`
	CAOverFloor  *float64 `json:"caOverFloor,omitempty"`
	// The median, least and greatest CA/floor ratio of the run's slices,
	// each against the floor measured around it (--slices).
	PairedCAOverFloor *pairedResult `json:"pairedCAOverFloor,omitempty"`
	// The floor with every core busy at once, and the CA over it.
	BusyFloorSeconds *float64 `json:"busyFloorSeconds,omitempty"`
	CAOverBusyFloor  *float64 `json:"caOverBusyFloor,omitempty"`
	// The CA's system calls and context switches per CSR (--ca-pid).
	CAPerCSR *caCountsPerCSR `json:"caPerCSR,omitempty"`
	// The share of the machine's CPU time during the run that went to
	// neither the CA nor the load generator.
	OtherCPUShare *float64             `json:"otherCPUShare,omitempty"`
	JunkFlood     *loadgen.FloodResult `json:"junkFlood,omitempty"`
}

// caCountsPerCSR is loadgen.ProcCounts per CSR.
type caCountsPerCSR struct {
	ReadCalls           float64 `json:"readSyscalls"`
	WriteCalls          float64 `json:"writeSyscalls"`
	VoluntarySwitches   float64 `json:"voluntaryContextSwitches"`
	InvoluntarySwitches float64 `json:"involuntaryContextSwitches"`
}

type pairedResult struct {
	Slices int     `json:"slices"`
	Median float64 `json:"median"`
	Least  float64 `json:"least"`
	Most   float64 `json:"most"`
	// Over all slices against the mean of the floor batches between them.
	Interleaved float64 `json:"interleaved"`
}

type latencyResult struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func newBenchCAResult(r *loadgen.Result, cfg loadgen.Config, flood *loadgen.FloodResult) benchCAResult {
	out := benchCAResult{
		Requests: r.Requests, Errors: r.Errors, ErrorsByCode: r.ErrorsByCode,
		Seconds: r.Elapsed.Seconds(), PerSecond: r.Rate(),
		Concurrency: cfg.Concurrency, Connections: cfg.Connections, PacedRate: cfg.Rate,
		Latency:   latencyResult{r.P50.Seconds(), r.P90.Seconds(), r.P99.Seconds(), r.Max.Seconds()},
		JunkFlood: flood,
	}
	if r.TokenReviews >= 0 {
		out.TokenReviews = ptr(r.TokenReviews)
	}
	if r.Requests > 0 {
		out.ClientCPUPerCSR = (r.ClientCPU / time.Duration(r.Requests)).Seconds()
		if r.ServerCPU >= 0 {
			out.CACPUPerCSR = ptr((r.ServerCPU / time.Duration(r.Requests)).Seconds())
		}
		if c := r.ServerCounts; c != nil {
			n := float64(r.Requests)
			out.CAPerCSR = &caCountsPerCSR{float64(c.ReadCalls) / n, float64(c.WriteCalls) / n, float64(c.VoluntarySwitches) / n, float64(c.InvoluntarySwitches) / n}
		}
	}
	if r.OtherCPU >= 0 {
		out.OtherCPUShare = ptr(r.OtherCPU)
	}
	if r.Floor != nil {
		out.FloorSeconds, out.FloorCPUs = ptr(r.Floor.PerOp.Seconds()), r.FloorCPUs
		if ok := r.Requests - r.Errors; ok > 0 && r.ServerCPU >= 0 && r.Floor.PerOp > 0 {
			out.CAOverFloor = ptr(float64(r.ServerCPU/time.Duration(ok)) / float64(r.Floor.PerOp))
		}
	}
	if med, least, most, ok := r.PairedRatio(); ok {
		out.PairedCAOverFloor = &pairedResult{Slices: len(r.Paired), Median: med, Least: least, Most: most, Interleaved: r.Interleaved.Ratio()}
	}
	if f := r.BusyFloor; f != nil {
		out.BusyFloorSeconds = ptr(f.PerOp.Seconds())
		if ok := r.Requests - r.Errors; ok > 0 && r.ServerCPU >= 0 && f.PerOp > 0 {
			out.CAOverBusyFloor = ptr(float64(r.ServerCPU/time.Duration(ok)) / float64(f.PerOp))
		}
	}
	return out
}

// benchSDSResult is the result of "castellan bench sds".
type benchSDSResult struct {
	Streams        int                `json:"streams"`
	Delta          bool               `json:"delta"`
	ConnectSeconds float64            `json:"connectSeconds"`
	Rotations      []benchSDSRotation `json:"rotations"`
	// FanOutMedian and FanOutMax are the times from a rotation's
	// installation to its last stream.
	FanOutMedian float64 `json:"fanOutMedianSeconds"`
	FanOutMax    float64 `json:"fanOutMaxSeconds"`
	// Read from the agent's /metrics (--metrics-url).
	RSSBeforeBytes        *float64 `json:"rssBeforeBytes,omitempty"`
	RSSAfterBytes         *float64 `json:"rssAfterBytes,omitempty"`
	CPUPerRotationSeconds *float64 `json:"cpuPerRotationSeconds,omitempty"`
}

// benchSDSRotation is one rotation, timed from its trigger.
type benchSDSRotation struct {
	TriggerToInstalled float64 `json:"triggerToInstalledSeconds"`
	InstalledToFirst   float64 `json:"installedToFirstStreamSeconds"`
	InstalledToLast    float64 `json:"installedToLastStreamSeconds"`
}

func newBenchSDSResult(res sdsload.Result, delta, usage bool) benchSDSResult {
	out := benchSDSResult{Streams: res.Streams, Delta: delta, ConnectSeconds: res.Connect.Seconds()}
	for _, r := range res.Rotations {
		out.Rotations = append(out.Rotations, benchSDSRotation{
			TriggerToInstalled: r.Installed.Sub(r.Triggered).Seconds(),
			InstalledToFirst:   r.First.Sub(r.Installed).Seconds(),
			InstalledToLast:    r.FanOut().Seconds(),
		})
	}
	if fo := res.FanOuts(); len(fo) > 0 {
		out.FanOutMedian, out.FanOutMax = fo[len(fo)/2].Seconds(), fo[len(fo)-1].Seconds()
	}
	if usage {
		out.RSSBeforeBytes, out.RSSAfterBytes = ptr(res.RSSBefore), ptr(res.RSSAfter)
		out.CPUPerRotationSeconds = ptr(res.CPUPerRotation.Seconds())
	}
	return out
}

// benchTokenResult is the result of "castellan bench token".
type benchTokenResult struct {
	JWKS   string `json:"jwks"`
	Tokens string `json:"tokens"`
	Count  int    `json:"count"`
}

func ptr[T any](v T) *T { return &v }
