package node

import (
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// recordingParty stands in for a tss session: this fuzz target is about
// what reaches a party, not about the protocol.
type recordingParty struct{ delivered int }

func (p *recordingParty) Deliver(string, bool, []byte) error { p.delivered++; return nil }
func (p *recordingParty) Abort(*tss.SessionError)            {}

// FuzzEnvelope feeds arbitrary bytes, as a peer could send them, through the
// peer codec and the router's checks. Nothing may panic, and nothing that
// fails a check may reach the party.
func FuzzEnvelope(f *testing.F) {
	id := peerwire.NewSessionID()
	good, _ := peerwire.MarshalEnvelope(&peerwire.Envelope{Version: peerwire.Version, Session: id, Kind: peerwire.KindSign, Key: "k", From: "b", Round: 1, Type: "T1", Broadcast: true, Payload: []byte{1, 2}})
	f.Add(good, "b")
	f.Add([]byte(`{"v":1,"session":"00","kind":"sign"}`), "b")
	f.Add([]byte(`{"v":1,"session":"`+id.String()+`","kind":"sign","key":"k","from":"a","round":-5}`), "a")
	f.Add([]byte("\xff\xfe"), "c")
	f.Fuzz(func(t *testing.T, data []byte, caller string) {
		r := newRouter(time.Minute)
		p := &recordingParty{}
		if err := r.add(&session{id: id, kind: peerwire.KindSign, key: "k", members: []string{"a", "b"}, coordinator: "a", party: p}); err != nil {
			t.Fatal(err)
		}
		defer r.abort(id)
		var env peerwire.Envelope
		if err := peerwire.UnmarshalEnvelope(data, &env); err != nil {
			return
		}
		s, err := r.accept(caller, &env)
		if err != nil {
			return
		}
		if s.id != id || env.From != caller || (caller != "a" && caller != "b") || env.Kind != peerwire.KindSign || env.Key != "k" {
			t.Fatalf("accepted an envelope that should fail a check: caller %q env %+v", caller, env)
		}
		// The same message twice is a duplicate.
		if _, err := r.accept(caller, &env); err == nil {
			t.Fatal("accepted a duplicate")
		}
	})
}
