package main

import (
	"strings"

	"github.com/spf13/pflag"
)

// A flag whose value is a file or directory path is declared with pathVar or pathsVar, which
// give it the pflag type "path" or "paths". The configuration file resolves exactly the flags of
// those types relative to its own directory (isPathFlag), so a new path flag cannot be missed by
// forgetting to add it to a list: declaring it as a path is what makes it one, and --help shows
// "path" as its value.
const (
	pathType  = "path"
	pathsType = "paths"
)

// pathValue is a string flag holding a path.
type pathValue struct{ p *string }

func (v pathValue) String() string     { return *v.p }
func (v pathValue) Set(s string) error { *v.p = s; return nil }
func (v pathValue) Type() string       { return pathType }

// pathsValue is a repeatable flag holding paths, one per occurrence (like pflag's StringArray:
// no splitting at commas, which a path may contain).
type pathsValue struct{ p *[]string }

// String is "" when no path is set, which --help takes for "no default".
func (v pathsValue) String() string {
	if len(*v.p) == 0 {
		return ""
	}
	return "[" + strings.Join(*v.p, ",") + "]"
}
func (v pathsValue) Set(s string) error { *v.p = append(*v.p, s); return nil }
func (v pathsValue) Type() string       { return pathsType }

func pathVar(f *pflag.FlagSet, p *string, name, value, usage string) {
	*p = value
	f.Var(pathValue{p}, name, usage)
}

func pathsVar(f *pflag.FlagSet, p *[]string, name, usage string) {
	f.Var(pathsValue{p}, name, usage)
}

// isPathFlag reports whether f holds one or more paths.
func isPathFlag(f *pflag.Flag) bool {
	t := f.Value.Type()
	return t == pathType || t == pathsType
}
