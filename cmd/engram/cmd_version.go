package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

// version is engram's version, set at build time by the Makefile
// (-ldflags "-X main.version=..."); otherwise the module version from the
// build information is used.
var version = ""

// coreModules are the dependencies whose versions decide what a store
// holds and how it is read, in the order `engram version` lists them.
var coreModules = []struct{ name, path string }{
	{"blake3", "github.com/zeebo/blake3"},
	{"zstd", "github.com/klauspost/compress"},
	{"bbolt", "go.etcd.io/bbolt"},
	{"cli", "github.com/urfave/cli/v2"},
}

// versionInfo is what `engram version --json` prints.
type versionInfo struct {
	Version   string          `json:"version"`
	GoVersion string          `json:"go_version"`
	Modules   []moduleVersion `json:"modules"`
}

type moduleVersion struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	Version string `json:"version"` // "unknown" without build information
}

func buildVersion() versionInfo {
	v := versionInfo{Version: version, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if v.Version == "" {
		v.Version = "unknown"
		if ok && bi.Main.Version != "" {
			v.Version = bi.Main.Version
		}
		if ok && v.Version == "(devel)" {
			v.Version += vcsRevision(bi)
		}
	}
	deps := map[string]string{}
	if ok {
		for _, d := range bi.Deps {
			m := d
			if d.Replace != nil {
				m = d.Replace
			}
			deps[d.Path] = m.Version
		}
	}
	for _, c := range coreModules {
		ver := deps[c.path]
		if ver == "" {
			ver = "unknown"
		}
		v.Modules = append(v.Modules, moduleVersion{Name: c.name, Path: c.path, Version: ver})
	}
	return v
}

func printVersion(c *cli.Context) error {
	v := buildVersion()
	for _, l := range c.Lineage() { // --json before or after "version"
		if l.Bool(jsonFlag.Name) {
			return printJSON(c.App.Writer, v)
		}
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "engram\t%s\n", v.Version)
	fmt.Fprintf(tw, "go\t%s\n", v.GoVersion)
	for _, m := range v.Modules {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.Version, m.Path)
	}
	return tw.Flush()
}

// --version prints what `engram version` prints; urfave/cli keeps its
// printer in a package variable, set once here.
func init() { cli.VersionPrinter = func(c *cli.Context) { _ = printVersion(c) } }

var versionCommand = &cli.Command{
	Name:      "version",
	Usage:     "print engram's version, the Go version and the versions of its core dependencies",
	ArgsUsage: " ",
	Flags:     []cli.Flag{&cli.BoolFlag{Name: jsonFlag.Name, Usage: jsonFlag.Usage}},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usagef("version takes no arguments")
		}
		return printVersion(c)
	},
}

// vcsRevision is " rev COMMIT" (and "+dirty") when the build recorded it.
func vcsRevision(bi *debug.BuildInfo) string {
	rev, dirty := "", ""
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value[:min(12, len(s.Value))]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "+dirty"
		}
	}
	if rev == "" {
		return ""
	}
	return " rev " + rev + dirty
}
