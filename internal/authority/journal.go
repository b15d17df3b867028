package authority

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// The journal keeps the request ids a node used across restarts: without
// it, a node that restarted would accept, within the window, an authority
// it had already signed with. Each used id is appended as one record,
// 16 bytes of id and 8 bytes of Unix milliseconds, written (not synced)
// before the signature it allows leaves the node. A process that crashes
// loses nothing the kernel has; a machine that loses power takes longer
// than the window to come back, and by then every lost id's authority is
// too old to pass anyway. Open compacts the file to the ids still inside
// twice the window.

const journalRecord = 16 + 8

// Open loads the ids recorded at path and appends every id used from now
// on. A missing file is an empty journal. A file that cannot be read whole
// is set aside (path + ".corrupt") and the verifier instead refuses every
// authority made before now (NotBefore), so that no id it may have
// forgotten can be replayed; the error says so, and the verifier works.
func (v *Verifier) Open(path string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.used == nil {
		v.used = map[[16]byte]time.Time{}
	}
	loadErr := v.loadLocked(path)
	if loadErr != nil {
		_ = os.Rename(path, path+".corrupt")
		// Authority times are whole milliseconds.
		v.notBefore = v.now().Truncate(time.Millisecond)
	}
	// Rewrite the live ids, then append from there.
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return errors.Join(loadErr, fmt.Errorf("request id journal: %w", err))
	}
	w := bufio.NewWriter(f)
	for id, t := range v.used {
		w.Write(id[:])
		_ = binary.Write(w, binary.BigEndian, t.UnixMilli())
	}
	if err := errors.Join(w.Flush(), f.Close(), os.Rename(tmp, path)); err != nil {
		return errors.Join(loadErr, fmt.Errorf("request id journal: %w", err))
	}
	j, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return errors.Join(loadErr, fmt.Errorf("request id journal: %w", err))
	}
	v.journal = j
	if loadErr != nil {
		return fmt.Errorf("request id journal %s unreadable (%w); set aside, and authorities made before now are refused", path, loadErr)
	}
	return nil
}

func (v *Verifier) loadLocked(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	cutoff := v.now().Add(-2 * v.window())
	r := bufio.NewReader(f)
	var rec [journalRecord]byte
	for {
		_, err := io.ReadFull(r, rec[:])
		if errors.Is(err, io.EOF) {
			return nil
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			// A record cut short by a crash mid-write: the ids before it
			// are whole, and this one's signature never left.
			return nil
		}
		if err != nil {
			return err
		}
		var id [16]byte
		copy(id[:], rec[:16])
		t := time.UnixMilli(int64(binary.BigEndian.Uint64(rec[16:])))
		if t.After(cutoff) {
			v.used[id] = t
		}
	}
}

// Close closes the journal.
func (v *Verifier) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.journal == nil {
		return nil
	}
	err := v.journal.Close()
	v.journal = nil
	return err
}

// appendLocked records one used id; v.mu is held.
func (v *Verifier) appendLocked(id [16]byte, t time.Time) error {
	if v.journal == nil {
		return nil
	}
	var rec [journalRecord]byte
	copy(rec[:], id[:])
	binary.BigEndian.PutUint64(rec[16:], uint64(t.UnixMilli()))
	_, err := v.journal.Write(rec[:])
	return err
}

// admissible refuses an authority made before NotBefore.
func (v *Verifier) admissible(t time.Time) error {
	v.mu.Lock()
	nb := v.notBefore
	v.mu.Unlock()
	if !nb.IsZero() && t.Before(nb) {
		return fmt.Errorf("made at %s, before this node could vouch for the ids it used (%s)", t.UTC().Format(time.RFC3339), nb.UTC().Format(time.RFC3339))
	}
	return nil
}
