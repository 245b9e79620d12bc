package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{Settings: []debug.BuildSetting{
		{Key: "-buildmode", Value: "exe"},
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "4f2c1a9b03de5e6f7a8b9c0d1e2f3a4b5c6d7e8f"},
		{Key: "vcs.time", Value: "2026-12-03T17:02:11Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	clean := &debug.BuildInfo{Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "4f2c1a9b03de5e6f7a8b9c0d1e2f3a4b5c6d7e8f"},
		{Key: "vcs.time", Value: "2026-12-03T17:02:11Z"},
		{Key: "vcs.modified", Value: "false"},
	}}
	for _, tc := range []struct {
		name    string
		version string
		bi      *debug.BuildInfo
		want    string
		rev     string
	}{
		{"no build info", "dev", nil, "dev", ""},
		{"no stamp (go run, go test)", "dev", &debug.BuildInfo{}, "dev", ""},
		{"a modified checkout", "dev", stamped, "dev (4f2c1a9b03de, 2026-12-03T17:02:11Z, modified)", "4f2c1a9b03de5e6f7a8b9c0d1e2f3a4b5c6d7e8f"},
		{"a clean checkout with a version", "1.2.0", clean, "1.2.0 (4f2c1a9b03de, 2026-12-03T17:02:11Z)", "4f2c1a9b03de5e6f7a8b9c0d1e2f3a4b5c6d7e8f"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := fromBuildInfo(tc.version, tc.bi)
			if got := i.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if i.Revision != tc.rev {
				t.Errorf("Revision = %q, want %q", i.Revision, tc.rev)
			}
		})
	}
}
