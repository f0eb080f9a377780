package loadgen

import (
	"os"
	"testing"
	"time"
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
