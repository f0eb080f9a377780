package loadgen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Floor is the least CPU one issuance can cost: one ECDSA P-256
// verification (the CSR's proof of possession) and one P-256 signature (the
// certificate), measured on this machine as the CPU time of one thread.
type Floor struct {
	// PerOp is the median of Samples.
	PerOp time.Duration
	// Samples are the CPU times per verify+sign of each measured batch.
	Samples []time.Duration
}

// Min and Max return the smallest and largest sample.
func (f *Floor) Min() time.Duration { return slices.Min(f.Samples) }

// Max returns the largest sample.
func (f *Floor) Max() time.Duration { return slices.Max(f.Samples) }

// merge adds g's samples to f and sets f.PerOp to the median of them all.
func (f *Floor) merge(g *Floor) {
	f.Samples = append(f.Samples, g.Samples...)
	s := slices.Clone(f.Samples)
	slices.Sort(s)
	f.PerOp = s[len(s)/2]
}

func (f *Floor) String() string {
	return fmt.Sprintf("%s per verify+sign (median of %d batches, %s to %s)", us(f.PerOp), len(f.Samples), us(f.Min()), us(f.Max()))
}

// MeasureFloor measures the crypto floor in batches of n verify+sign pairs
// on one OS thread, by that thread's CPU time (so that time the thread
// spends waiting for a core on a loaded machine does not count).
func MeasureFloor(batches, n int) (*Floor, error) { return MeasureFloorOn(nil, batches, n) }

// MeasureFloorOn measures the crypto floor as MeasureFloor does, on a
// thread that may run only on cpus (if not nil): the CPUs the CA may run
// on, so that the floor and the CA are measured on the same cores. On a
// shared host one core can be tens of percent slower than another.
func MeasureFloorOn(cpus *unix.CPUSet, batches, n int) (*Floor, error) {
	if batches <= 0 || n <= 0 {
		return nil, errors.New("loadgen: floor batches and size must be positive")
	}
	if cpus == nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return measureFloor(batches, n)
	}
	// A thread of its own, given back the CPUs it had and never unlocked:
	// when its goroutine returns, the runtime ends the thread (or, for the
	// main thread, parks it for good), so that no thread limited to cpus
	// goes back to run this process's other goroutines.
	type result struct {
		f   *Floor
		err error
	}
	done := make(chan result, 1)
	var tid int // written before the send on done, read after it
	go func() {
		runtime.LockOSThread()
		tid = unix.Gettid()
		f, err := measureFloorPinned(cpus, batches, n)
		done <- result{f, err}
	}()
	r := <-done
	awaitThreadEnd(tid, time.Second)
	return r.f, r.err
}

// measureFloorPinned measures the floor on the calling goroutine's
// thread, to which it must be locked, limited to cpus meanwhile.
func measureFloorPinned(cpus *unix.CPUSet, batches, n int) (*Floor, error) {
	var had unix.CPUSet
	if err := unix.SchedGetaffinity(0, &had); err != nil {
		return nil, fmt.Errorf("loadgen: reading this thread's CPUs: %w", err)
	}
	if err := unix.SchedSetaffinity(0, cpus); err != nil {
		return nil, fmt.Errorf("loadgen: running the floor on the CA's CPUs %s: %w", cpuList(cpus), err)
	}
	defer func() { _ = unix.SchedSetaffinity(0, &had) }() // best effort: the thread ends anyway
	return measureFloor(batches, n)
}

// awaitThreadEnd waits up to d for this process's thread tid to end, so
// that what is measured next (this process's threads, their counts) does
// not see it go. The main thread never ends; it is waited for in vain.
func awaitThreadEnd(tid int, d time.Duration) {
	dir := "/proc/self/task/" + strconv.Itoa(tid)
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Microsecond) {
		if _, err := os.Stat(dir); err != nil {
			return
		}
	}
}

// measureFloor measures the floor on the calling goroutine's thread, to
// which it must be locked.
func measureFloor(batches, n int) (*Floor, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	// A message the size of a CSR's and a certificate's signed part.
	msg := make([]byte, 300)
	if _, err := rand.Read(msg); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(msg)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		return nil, err
	}
	op := func() error {
		d := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(&key.PublicKey, d[:], sig) {
			return errors.New("loadgen: floor: signature does not verify")
		}
		d = sha256.Sum256(msg)
		_, err := ecdsa.SignASN1(rand.Reader, key, d[:])
		return err
	}
	for range n { // warm up
		if err := op(); err != nil {
			return nil, err
		}
	}
	f := &Floor{}
	for range batches {
		t0, err := threadCPU()
		if err != nil {
			return nil, err
		}
		for range n {
			if err := op(); err != nil {
				return nil, err
			}
		}
		t1, err := threadCPU()
		if err != nil {
			return nil, err
		}
		f.Samples = append(f.Samples, (t1-t0)/time.Duration(n))
	}
	out := &Floor{}
	out.merge(f)
	return out, nil
}

// MeasureFloorBusy measures the crypto floor as MeasureFloor does, on
// threads OS threads at once, each timed by its own CPU clock. With one
// thread a core, it is the floor of a machine whose every core is busy,
// as it is when a CA runs at saturation: cores that share caches, memory
// bandwidth or a physical core under a hypervisor are slower together
// than one alone. The samples of every thread are merged.
func MeasureFloorBusy(batches, n, threads int) (*Floor, error) {
	if threads <= 0 {
		return nil, errors.New("loadgen: floor threads must be positive")
	}
	floors := make([]*Floor, threads)
	errs := make([]error, threads)
	var wg sync.WaitGroup
	for i := range threads {
		wg.Go(func() { floors[i], errs[i] = MeasureFloor(batches, n) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := &Floor{}
	for _, f := range floors {
		out.merge(f)
	}
	return out, nil
}

// threadCPU returns the CPU time of the calling OS thread, to the
// nanosecond (getrusage counts in scheduler ticks).
func threadCPU() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("loadgen: thread CPU time: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// serverCPUs returns the CPUs the process pid may run on.
func serverCPUs(pid int) (*unix.CPUSet, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(pid, &set); err != nil {
		return nil, fmt.Errorf("loadgen: reading the CPUs of process %d: %w", pid, err)
	}
	return &set, nil
}

// cpuList formats a CPU set as Linux lists it (0-3,6).
func cpuList(set *unix.CPUSet) string {
	var b []byte
	left := set.Count()
	for cpu := 0; left > 0; cpu++ {
		if !set.IsSet(cpu) {
			continue
		}
		end := cpu
		for left--; left > 0 && set.IsSet(end+1); left-- {
			end++
		}
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(cpu), 10)
		if end > cpu {
			b = append(b, '-')
			b = strconv.AppendInt(b, int64(end), 10)
		}
		cpu = end
	}
	return string(b)
}
