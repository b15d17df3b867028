package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// applyConfigFile reads a YAML configuration file whose keys are the command's flag names
// (listen, cert, signer, …) and sets every flag that was not given on the command line: flags
// override the file. A list value sets a repeatable flag once per element. A relative path in a
// path flag (see pathVar) is taken relative to the file's directory, so a deployment directory
// can move as a whole.
func applyConfigFile(flags *pflag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic errors
	dir := filepath.Dir(path)
	for _, key := range keys {
		f := flags.Lookup(key)
		if f == nil || key == "config" || key == "help" {
			return fmt.Errorf("config %s: unknown key %q (the keys are the flag names: %s)", path, key, flagNames(flags))
		}
		if f.Changed {
			continue // the command line wins
		}
		var values []string
		switch v := doc[key].(type) {
		case nil:
			continue
		case []any:
			for _, e := range v {
				s, err := scalar(e)
				if err != nil {
					return fmt.Errorf("config %s: %s: %w", path, key, err)
				}
				values = append(values, s)
			}
		default:
			s, err := scalar(v)
			if err != nil {
				return fmt.Errorf("config %s: %s: %w", path, key, err)
			}
			values = []string{s}
		}
		for _, s := range values {
			if isPathFlag(f) && s != "" && !filepath.IsAbs(s) {
				s = filepath.Join(dir, s)
			}
			if err := flags.Set(key, s); err != nil {
				return fmt.Errorf("config %s: %s: %w", path, key, err)
			}
		}
	}
	return nil
}

func scalar(v any) (string, error) {
	switch v.(type) {
	case map[string]any, []any:
		return "", fmt.Errorf("want a value or a list of values, not %T", v)
	}
	return fmt.Sprint(v), nil
}

func flagNames(flags *pflag.FlagSet) string {
	var names []string
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && f.Name != "help" {
			names = append(names, f.Name)
		}
	})
	return strings.Join(names, ", ")
}
