// Package buildinfo says which pairlb is running: the version given at link time, if any, and
// the VCS revision and commit time that the go command stamps into every binary it builds in a
// checkout (`go build`, with its default -buildvcs=auto), so that a plain build of an untagged
// tree still names its commit in `pairlb version`, the status and pairlb_build_info.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// Info identifies a build. Revision and Time are empty when the binary carries no VCS stamp
// (`go run`, `go test`, a build outside a checkout or with -buildvcs=false).
type Info struct {
	Version  string // from -ldflags "-X main.version=...", "dev" when not given
	Revision string // the commit's full hash
	Time     string // the commit's time, RFC 3339 in UTC
	Modified bool   // the tree had uncommitted changes
}

// Read returns the build of this binary, with version as its version.
func Read(version string) Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(version, bi)
}

func fromBuildInfo(version string, bi *debug.BuildInfo) Info {
	i := Info{Version: version}
	if bi == nil {
		return i
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// ShortRevision is the revision's first 12 hex digits, as `git log --abbrev=12` shows it.
func (i Info) ShortRevision() string {
	if len(i.Revision) > 12 {
		return i.Revision[:12]
	}
	return i.Revision
}

// String is the one-line form: "dev (4f2c1a9b03de, 2026-12-03T17:02:11Z, modified)", or the
// version alone when the binary carries no VCS stamp.
func (i Info) String() string {
	var parts []string
	if r := i.ShortRevision(); r != "" {
		parts = append(parts, r)
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	if i.Modified {
		parts = append(parts, "modified")
	}
	if len(parts) == 0 {
		return i.Version
	}
	return i.Version + " (" + strings.Join(parts, ", ") + ")"
}
