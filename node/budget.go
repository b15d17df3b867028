package node

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// The abort budget. A signing session that fails without naming anyone
// (the joint signature does not verify, or a check over everyone's values
// fails) is the one outcome a cheating member can cause without being
// convicted, and every such outcome is something it may learn from. An
// honest cluster never produces one: deadlines, crashes and stalls name
// their members. So each key may suffer only AbortBudget of them on this
// node; after that the key is suspended here (it neither coordinates nor
// joins a session) until an admin, having looked at the audit log, resumes
// it with `signer key resume`. The counts live in data_dir/aborts.json.
//
// A compromised member can spend the budget on purpose to stop a key: that
// is the price of not letting it learn, and the alert says so.

// ErrKeySuspended is returned for a key whose abort budget ran out here.
var ErrKeySuspended = errors.New("key suspended on this node after too many signing sessions failed without a culprit")

type keyAborts struct {
	Aborts      int       `json:"aborts"`
	Last        time.Time `json:"last"`
	LastSession string    `json:"last_session"`
	LastError   string    `json:"last_error"`
	Suspended   string    `json:"suspended,omitempty"`
}

type abortBudget struct {
	path  string
	limit int
	mu    sync.Mutex
	m     map[string]*keyAborts
}

func loadAbortBudget(dataDir string, limit int) (*abortBudget, error) {
	b := &abortBudget{path: filepath.Join(dataDir, "aborts.json"), limit: limit, m: map[string]*keyAborts{}}
	if err := loadJSON(b.path, &b.m); err != nil {
		return nil, fmt.Errorf("abort budget: %w", err)
	}
	return b, nil
}

// charge counts one unattributed abort; it returns the count and whether
// this abort suspended the key.
func (b *abortBudget) charge(key string, session peerwire.SessionID, err error) (int, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.m[key]
	if k == nil {
		k = &keyAborts{}
		b.m[key] = k
	}
	k.Aborts++
	k.Last, k.LastSession, k.LastError = time.Now().UTC(), session.String(), err.Error()
	suspended := false
	if k.Aborts >= b.limit && k.Suspended == "" {
		k.Suspended = fmt.Sprintf("%d signing sessions failed without naming a culprit (budget %d), the last %s (session %s); an admin must look at the audit log and run `signer key resume`",
			k.Aborts, b.limit, k.Last.Format(time.RFC3339), k.LastSession)
		suspended = true
	}
	return k.Aborts, suspended, saveJSON(b.path, b.m)
}

func (b *abortBudget) state(key string) (aborts int, suspended string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if k := b.m[key]; k != nil {
		return k.Aborts, k.Suspended
	}
	return 0, ""
}

func (b *abortBudget) reset(key string) (keyAborts, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.m[key]
	delete(b.m, key)
	if k == nil {
		return keyAborts{}, nil
	}
	return *k, saveJSON(b.path, b.m)
}

// chargeAbort charges key's budget for a session that failed naming nobody.
func (n *Node) chargeAbort(key string, session peerwire.SessionID, err error) {
	count, suspended, serr := n.budget.charge(key, session, err)
	if serr != nil {
		n.log.Error().Err(serr).Str("key", key).Msg("abort budget not saved")
	}
	n.metrics.unattributed.WithLabelValues(key).Inc()
	n.log.Warn().Str("event", "unattributed_abort").Str("key", key).Str("session", session.String()).Int("aborts", count).Int("budget", n.budget.limit).
		AnErr("err", err).Msg("signing session failed without naming a culprit; charged to the key's abort budget")
	if suspended {
		n.metrics.suspended.WithLabelValues(key).Set(1)
		if id, err := tss.ParseKeyID(key); err == nil {
			n.pool.drain(id)
		}
		n.log.Error().Bool("alert", true).Str("event", "key_suspended").Str("key", key).Int("aborts", count).
			Msg("key suspended on this node: too many signing sessions failed without a culprit, which is what a member probing secrets would cause; run `signer key resume` after checking the audit log")
	}
}

// keySuspended returns why key does not sign on this node, if it does not.
func (n *Node) keySuspended(id tss.KeyID) error {
	if _, why := n.budget.state(id.String()); why != "" {
		return fmt.Errorf("key %s: %w: %s", id, ErrKeySuspended, why)
	}
	return nil
}

// keyRefused says why this node does not sign with key now: an admin
// disabled it, or its abort budget here is spent.
func (n *Node) keyRefused(id tss.KeyID) error {
	if n.keyDisabled(id) {
		return fmt.Errorf("key %s: %w", id, ErrKeyDisabled)
	}
	return n.keySuspended(id)
}

// resumeKey starts key's budget afresh (an admin's decision).
func (n *Node) resumeKey(key, by string) (*peerwire.ResumeKeyResponse, error) {
	if _, err := tss.ParseKeyID(key); err != nil {
		return nil, err
	}
	was, err := n.budget.reset(key)
	if err != nil {
		return nil, err
	}
	n.metrics.suspended.WithLabelValues(key).Set(0)
	n.log.Warn().Str("event", "key_resumed").Str("key", key).Str("by", by).Int("aborts", was.Aborts).Bool("was_suspended", was.Suspended != "").
		Msg("key's abort budget reset by an admin")
	return &peerwire.ResumeKeyResponse{WasSuspended: was.Suspended != "", Aborts: was.Aborts}, nil
}
