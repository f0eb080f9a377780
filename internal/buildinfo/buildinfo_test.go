package buildinfo

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFromBuildInfo(t *testing.T) {
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want Info
	}{
		{
			name: "tagged clean build",
			bi: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"},
				Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "false"}}},
			want: Info{Version: "v1.2.0", Revision: "abc123", GoVersion: "go1.26.8"},
		},
		{
			name: "dirty work tree",
			bi: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
				Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}, {Key: "vcs.revision", Value: "abc123"}}},
			want: Info{Version: "(devel)", Revision: "abc123-dirty", GoVersion: "go1.26.8"},
		},
		{
			name: "no VCS information",
			bi:   debug.BuildInfo{GoVersion: "go1.26.8"},
			want: Info{Version: "unknown", Revision: "unknown", GoVersion: "go1.26.8"},
		},
		{
			name: "modified without a revision",
			bi:   debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}},
			want: Info{Version: "unknown", Revision: "unknown", GoVersion: "unknown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromBuildInfo(&tt.bi); got != tt.want {
				t.Fatalf("fromBuildInfo = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadInTestBinary(t *testing.T) {
	i := Read()
	if i.Version == "" || i.Revision == "" || !strings.HasPrefix(i.GoVersion, "go") {
		t.Fatalf("Read() = %+v: every field must be set, Go version must start with go", i)
	}
}

func TestWrite(t *testing.T) {
	var b bytes.Buffer
	if err := (Info{Version: "v1.2.0", Revision: "abc", GoVersion: "go1.26.8"}).Write(&b, "castellan"); err != nil {
		t.Fatal(err)
	}
	want := "castellan\n  version:  v1.2.0\n  revision: abc\n  go:       go1.26.8\n"
	if b.String() != want {
		t.Fatalf("Write:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newCollector(Info{Version: "v1.2.0", Revision: "abc", GoVersion: "go1.26.8"}))
	want := `# HELP castellan_build_info Build information of the running binary; the value is always 1.
# TYPE castellan_build_info gauge
castellan_build_info{goversion="go1.26.8",revision="abc",version="v1.2.0"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %v", problems, err)
	}
}
