package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// saveJSON writes v to path as indented JSON, atomically (a temporary file
// renamed over the old one), readable by the node's user only. The small
// state files of a node (key states, convictions, abort budgets, pending
// resharings) hold nothing secret, but they decide what the node signs.
func saveJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}

// loadJSON reads path into v; a missing file leaves v as it is.
func loadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt (fix or restore it from a backup): %w", path, err)
	}
	return nil
}
