package loadgen

import (
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMeasureFloor(t *testing.T) {
	f, err := MeasureFloor(3, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Samples) != 3 || f.PerOp <= 0 || f.Min() > f.PerOp || f.Max() < f.PerOp {
		t.Fatalf("floor %+v: want 3 positive samples around the median", f)
	}
	if _, err := MeasureFloor(0, 5); err == nil {
		t.Fatal("no batches: want an error")
	}
}

func TestMeasureFloorBusy(t *testing.T) {
	f, err := MeasureFloorBusy(3, 5, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Samples) != 6 || f.PerOp <= 0 || f.Min() > f.PerOp || f.Max() < f.PerOp {
		t.Fatalf("floor %+v: want 2 threads' 3 positive samples around the median", f)
	}
	for _, c := range []struct{ batches, n, threads int }{{0, 5, 2}, {3, 0, 2}, {3, 5, 0}} {
		if _, err := MeasureFloorBusy(c.batches, c.n, c.threads); err == nil {
			t.Errorf("MeasureFloorBusy(%d, %d, %d): want an error", c.batches, c.n, c.threads)
		}
	}
}

func TestProcCPU(t *testing.T) {
	// /proc counts in ticks of 10 ms: burn CPU until some is counted.
	var u, s time.Duration
	for range 100 {
		if _, err := MeasureFloor(1, 50); err != nil {
			t.Fatal(err)
		}
		var err error
		if u, s, err = procCPU(os.Getpid()); err != nil {
			t.Fatal(err)
		}
		if u+s > 0 {
			break
		}
	}
	if u+s <= 0 {
		t.Fatalf("user %s sys %s: want CPU time used", u, s)
	}
	if _, _, err := procCPU(1 << 30); err == nil {
		t.Fatal("no such process: want an error")
	}
	if u, s, err := procCPU(0); err != nil || u != 0 || s != 0 {
		t.Fatalf("pid 0: got %s %s %v, want zeros", u, s, err)
	}
}

func TestPairedRatio(t *testing.T) {
	us := time.Microsecond
	for _, tc := range []struct {
		name             string
		pairs            []Pair
		med, least, most float64
		ok               bool
	}{
		{"not sliced", nil, 0, 0, 0, false},
		{"one", []Pair{{150 * us, 100 * us}}, 1.5, 1.5, 1.5, true},
		{"each against its own floor", []Pair{{150 * us, 100 * us}, {260 * us, 200 * us}, {140 * us, 100 * us}}, 1.4, 1.3, 1.5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Result{Paired: tc.pairs}
			med, least, most, ok := r.PairedRatio()
			if ok != tc.ok || !near(med, tc.med) || !near(least, tc.least) || !near(most, tc.most) {
				t.Errorf("PairedRatio() = %v, %v, %v, %v; want %v, %v, %v, %v", med, least, most, ok, tc.med, tc.least, tc.most, tc.ok)
			}
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestSamplesAddUp(t *testing.T) {
	ms := time.Millisecond
	var all sample
	all.add(&sample{lat: []time.Duration{3 * ms, 1 * ms}, errs: map[string]int{"Unavailable": 1}, nerr: 1, elapsed: time.Second})
	all.add(&sample{lat: []time.Duration{2 * ms, 4 * ms}, errs: map[string]int{"Unavailable": 1}, nerr: 1, elapsed: time.Second})
	r := all.result()
	if r.Requests != 4 || r.Errors != 2 || r.ErrorsByCode["Unavailable"] != 2 || r.Elapsed != 2*time.Second {
		t.Errorf("result %+v", r)
	}
	if r.P50 != 3*ms || r.Max != 4*ms {
		t.Errorf("p50 %v max %v, want the percentiles of both samples together", r.P50, r.Max)
	}
}

func TestCPUList(t *testing.T) {
	for _, tc := range []struct {
		cpus []int
		want string
	}{
		{nil, ""},
		{[]int{0}, "0"},
		{[]int{0, 1}, "0-1"},
		{[]int{0, 1, 2, 3, 6}, "0-3,6"},
		{[]int{1, 3, 5}, "1,3,5"},
		{[]int{5, 6, 9, 10, 11, 1023}, "5-6,9-11,1023"},
	} {
		var set unix.CPUSet
		for _, c := range tc.cpus {
			set.Set(c)
		}
		if got := cpuList(&set); got != tc.want {
			t.Errorf("cpuList(%v) = %q, want %q", tc.cpus, got, tc.want)
		}
	}
}

func TestMeasureFloorOn(t *testing.T) {
	var had unix.CPUSet
	if err := unix.SchedGetaffinity(0, &had); err != nil {
		t.Fatal(err)
	}
	var one unix.CPUSet
	one.Set(0)
	f, err := MeasureFloorOn(&one, 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Samples) != 2 || f.PerOp <= 0 {
		t.Fatalf("floor %+v: want 2 positive samples", f)
	}
	// The pinned thread has ended (or, were it the main thread, has its
	// CPUs back): every thread of this process may run where it could.
	if pinned := pinnedThreads(t, &had); len(pinned) > 0 {
		t.Errorf("threads %v are limited to fewer CPUs than %s after the floor", pinned, cpuList(&had))
	}
	var none unix.CPUSet
	if _, err := MeasureFloorOn(&none, 1, 1); err == nil {
		t.Error("no CPUs: want an error")
	}
	cpus, err := serverCPUs(os.Getpid())
	if err != nil || cpus.Count() == 0 {
		t.Fatalf("serverCPUs(self) = %v, %v", cpus, err)
	}
	if _, err := serverCPUs(1 << 30); err == nil {
		t.Fatal("no such process: want an error")
	}
}

// pinnedThreads lists this process's threads that may not run on every CPU
// of want, and those that are ending.
func pinnedThreads(t *testing.T, want *unix.CPUSet) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var pinned []string
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			t.Fatal(err)
		}
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &set); err != nil {
			// Ending: listed still, and its counts with it.
			pinned = append(pinned, task.Name()+" (ending)")
			continue
		}
		if set != *want {
			pinned = append(pinned, task.Name()+" ("+cpuList(&set)+")")
		}
	}
	return pinned
}
