// Package version says which build of tkeyless is running: the module
// version, the VCS commit (and whether the tree was dirty) and the Go
// toolchain, for `--version`, logs and bug reports.
//
// Go stamps VCS data into a binary by itself only when it builds inside a
// plain git checkout: it does not recognise git worktrees (.git is a file
// there) and it fails the build when git refuses the directory (a checkout
// owned by another user). So the Makefile builds with -buildvcs=false and
// stamps the same facts with -ldflags -X from `git` itself, and a build
// from a tarball without .git, or a plain `go build`, still works and says
// "unknown". When Go did stamp VCS data, that wins: it cannot drift from
// the source it describes.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set with -ldflags "-X github.com/tkeyless/tkeyless/internal/version.name=value"
// (see the Makefile's LDFLAGS). Strings, because -X sets only strings.
var (
	release string // `git describe --tags --always --dirty`, or a packager's version
	commit  string // full commit hash
	dirty   string // "true" when the working tree had uncommitted changes
	date    string // commit time, RFC 3339
)

// Info describes one build.
type Info struct {
	Module  string // module path of the main package
	Version string // module version: a tag, a pseudo-version, or "(devel)"
	Commit  string // VCS commit, or "unknown"
	Dirty   bool   // built from a tree with uncommitted changes
	Time    string // commit time, or ""
	Go      string // Go toolchain that built the binary
}

// Get reads the build's facts: what Go recorded (runtime/debug.ReadBuildInfo)
// first, then what the linker was told.
func Get() Info {
	i := Info{Module: "github.com/tkeyless/tkeyless", Version: "(devel)", Commit: "unknown", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		i.Module, i.Go = bi.Main.Path, bi.GoVersion
		if v := bi.Main.Version; v != "" {
			i.Version = v
		}
	}
	if release != "" && (i.Version == "(devel)" || i.Version == "") {
		i.Version = release
	}
	i.Commit, i.Dirty, i.Time = orDefault(commit, "unknown"), dirty == "true", date
	if ok {
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; rev != "" {
			i.Commit, i.Dirty, i.Time = rev, settings["vcs.modified"] == "true", settings["vcs.time"]
		}
	}
	return i
}

// String is the one line `--version` prints after the command's name:
//
//	v0.3.0-4-g1a2b3c4 (commit 1a2b3c4d…, dirty, 2026-12-03T13:52:54Z) go1.26.8
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (commit %s", i.Version, i.Commit)
	if i.Dirty {
		b.WriteString(", dirty")
	}
	if i.Time != "" {
		fmt.Fprintf(&b, ", %s", i.Time)
	}
	fmt.Fprintf(&b, ") %s", i.Go)
	return b.String()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
