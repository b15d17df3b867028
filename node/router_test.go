package node

import (
	"context"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// signMessages are real tss-lib signing messages (their contents made up):
// what the router inspects is the payload's own type, round and routing.
type signMessages struct {
	r1p2p, r3, r9 tsslib.ParsedMessage // round 1 MtA request (to b), round 3 and 9 broadcasts
	r3c           tsslib.ParsedMessage // round 3 broadcast from c
}

func newSignMessages() signMessages {
	pid := func(name string, i int64) *tsslib.PartyID { return tsslib.NewPartyID(name, name, big.NewInt(i)) }
	a, b, c := pid("a", 1), pid("b", 2), pid("c", 3)
	one := big.NewInt(1)
	return signMessages{
		r1p2p: signing.NewSignRound1Message1(b, a, big.NewInt(7), &mta.RangeProofAlice{Z: one, U: one, W: one, S: one, S1: one, S2: one}),
		r3:    signing.NewSignRound3Message(a, big.NewInt(5)),
		r9:    signing.NewSignRound9Message(a, big.NewInt(9)),
		r3c:   signing.NewSignRound3Message(c, big.NewInt(6)),
	}
}

// envelopeOf is the honest envelope of msg in session id: labels as the
// payload says.
func envelopeOf(t testing.TB, id peerwire.SessionID, kind peerwire.Kind, key string, msg tsslib.ParsedMessage) *peerwire.Envelope {
	t.Helper()
	payload, _, err := msg.WireBytes()
	if err != nil {
		t.Fatal(err)
	}
	typ := msg.Type()
	return &peerwire.Envelope{Version: peerwire.Version, Session: id, Kind: kind, Key: key, From: msg.GetFrom().Id,
		Round: tss.RoundOf(typ), Type: typ, Broadcast: msg.IsBroadcast(), Payload: payload}
}

// TestRouterAcceptRules: what a member lets through to a session's party.
// The envelope must be for a live session of its kind and key, from a
// member that is who its certificate says, with labels that match the
// payload's own type, round and routing; and it must be neither a
// duplicate nor an older round than that sender already sent.
func TestRouterAcceptRules(t *testing.T) {
	m := newSignMessages()
	for _, tc := range []struct {
		name     string
		kind     peerwire.Kind // the session's; sign unless set
		before   []tsslib.ParsedMessage
		finished bool
		sender   string // the authenticated caller; "a" unless set
		msg      tsslib.ParsedMessage
		change   func(*peerwire.Envelope)
		want     string // "" accepted
	}{
		{name: "a message under its own labels", msg: m.r1p2p},
		{name: "a broadcast under its own labels", msg: m.r3},
		{name: "another protocol version", msg: m.r3, change: func(e *peerwire.Envelope) { e.Version++ }, want: "envelope version"},
		{name: "an unknown session", msg: m.r3, change: func(e *peerwire.Envelope) { e.Session = peerwire.NewSessionID() }, want: "unknown session"},
		{name: "a sender claiming another member's name", sender: "c", msg: m.r3, want: `c sent a message claiming to be "a"`},
		{name: "an envelope for another kind of session", msg: m.r3, change: func(e *peerwire.Envelope) { e.Kind = peerwire.KindPresign }, want: "envelope is for"},
		{name: "an envelope for another key", msg: m.r3, change: func(e *peerwire.Envelope) { e.Key = "other" }, want: "envelope is for"},
		{name: "a sender that is not a member", sender: "d", msg: m.r3, change: func(e *peerwire.Envelope) { e.From = "d" }, want: "is not a member"},
		{name: "a payload that is no tss-lib message", msg: m.r3, change: func(e *peerwire.Envelope) { e.Payload = []byte("junk") }, want: "not a tss-lib message"},
		{name: "a message this kind of session does not exchange", kind: peerwire.KindKeygen, msg: m.r3, want: "exchanges no"},
		{name: "labelled another type", msg: m.r3, change: func(e *peerwire.Envelope) { e.Type = m.r9.Type() }, want: "but the payload is"},
		{name: "labelled another round", msg: m.r3, change: func(e *peerwire.Envelope) { e.Round = 4 }, want: "but the payload is"},
		{name: "a point-to-point message labelled a broadcast", msg: m.r1p2p, change: func(e *peerwire.Envelope) { e.Broadcast = true }, want: "but the payload is"},
		{name: "the same message twice", before: []tsslib.ParsedMessage{m.r3}, msg: m.r3, want: "duplicate"},
		{name: "the same type from another member", before: []tsslib.ParsedMessage{m.r3}, sender: "c", msg: m.r3c},
		{name: "an earlier round after a later one", before: []tsslib.ParsedMessage{m.r9}, msg: m.r3, want: "replayed or reordered"},
		{name: "a later round after an earlier one", before: []tsslib.ParsedMessage{m.r3}, msg: m.r9},
		{name: "a session that has finished", finished: true, msg: m.r3, want: "unknown session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, key := peerwire.KindSign, "k"
			if tc.kind != "" {
				kind, key = tc.kind, ""
			}
			r := newRouter(time.Minute)
			p := &fakeParty{}
			s := &session{id: peerwire.NewSessionID(), kind: kind, key: key, members: []string{"a", "b", "c"}, coordinator: "a", party: p}
			if err := r.add(s); err != nil {
				t.Fatal(err)
			}
			defer r.abort(s.id)
			for _, b := range tc.before {
				if _, err := r.accept(b.GetFrom().Id, envelopeOf(t, s.id, kind, key, b)); err != nil {
					t.Fatalf("setup: %v", err)
				}
			}
			if tc.finished {
				s.mu.Lock()
				s.state = stateFinished
				s.mu.Unlock()
			}
			sender := tc.sender
			if sender == "" {
				sender = "a"
			}
			env := envelopeOf(t, s.id, kind, key, tc.msg)
			if tc.change != nil {
				tc.change(env)
			}
			got, err := r.accept(sender, env)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "" && got != s:
				t.Fatal("accepted into another session")
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("accept: %v, want a refusal saying %q", err, tc.want)
			}
		})
	}
}

// TestRouterLifecycle: a session moves only forward, prepared → running →
// finished: one id is registered once, started once (by whoever the
// caller checked), and forgotten when it ends or, unstarted, when its
// Prepare times out; a run that fails is reported.
func TestRouterLifecycle(t *testing.T) {
	t.Run("an id is registered once", func(t *testing.T) {
		r := newRouter(time.Minute)
		s := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, party: &fakeParty{}}
		if err := r.add(s); err != nil {
			t.Fatal(err)
		}
		defer r.abort(s.id)
		if err := r.add(&session{id: s.id, kind: peerwire.KindSign, party: &fakeParty{}}); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("a second session with the same id: %v", err)
		}
	})
	t.Run("broadcasts are echoed in signing sessions of three or more", func(t *testing.T) {
		r := newRouter(time.Minute)
		for _, tc := range []struct {
			kind    peerwire.Kind
			members []string
			echo    bool
		}{
			{peerwire.KindSign, []string{"a", "b"}, false},
			{peerwire.KindSign, []string{"a", "b", "c"}, true},
			{peerwire.KindKeygen, []string{"a", "b", "c"}, true},
			{peerwire.KindReshare, []string{"a", "b", "c"}, false},
		} {
			s := &session{id: peerwire.NewSessionID(), kind: tc.kind, members: tc.members, party: &fakeParty{}}
			if err := r.add(s); err != nil {
				t.Fatal(err)
			}
			r.abort(s.id)
			if s.echo != tc.echo {
				t.Errorf("%s session of %d: echo %t, want %t", tc.kind, len(tc.members), s.echo, tc.echo)
			}
		}
	})
	t.Run("a session runs once and is forgotten", func(t *testing.T) {
		r := newRouter(time.Minute)
		var failed []error
		r.failed = func(_ *session, err error) { failed = append(failed, err) }
		runs := 0
		ok := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, party: &fakeParty{},
			run: func(context.Context) (*peerwire.RunResponse, error) {
				runs++
				return &peerwire.RunResponse{Signature: []byte("sig")}, nil
			}}
		if err := r.add(ok); err != nil {
			t.Fatal(err)
		}
		resp, err := r.start(context.Background(), ok.id)
		if err != nil || string(resp.Signature) != "sig" {
			t.Fatalf("start = %v, %v", resp, err)
		}
		if _, err := r.start(context.Background(), ok.id); !errors.Is(err, ErrUnknownSession) || runs != 1 || r.count() != 0 {
			t.Fatalf("a second start: %v (ran %d times, %d sessions live)", err, runs, r.count())
		}
		if len(failed) != 0 {
			t.Fatalf("a successful run was reported as failed: %v", failed)
		}
		boom := errors.New("boom")
		bad := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, party: &fakeParty{},
			run: func(context.Context) (*peerwire.RunResponse, error) { return nil, boom }}
		_ = r.add(bad)
		if _, err := r.start(context.Background(), bad.id); !errors.Is(err, boom) || len(failed) != 1 || !errors.Is(failed[0], boom) || r.count() != 0 {
			t.Fatalf("a failed run: %v, reported %v, %d live", err, failed, r.count())
		}
	})
	t.Run("a kept session stays registered, running, until finished", func(t *testing.T) {
		r := newRouter(time.Minute)
		s := &session{id: peerwire.NewSessionID(), kind: peerwire.KindPresign, members: []string{"a", "b"}, party: &fakeParty{}, keep: true,
			run: func(context.Context) (*peerwire.RunResponse, error) { return &peerwire.RunResponse{}, nil }}
		_ = r.add(s)
		if _, err := r.start(context.Background(), s.id); err != nil {
			t.Fatal(err)
		}
		if _, err := r.start(context.Background(), s.id); err == nil || !strings.Contains(err.Error(), "is running, not prepared") {
			t.Fatalf("starting a running session again: %v", err)
		}
		r.finish(s)
		if _, err := r.get(s.id); !errors.Is(err, ErrUnknownSession) {
			t.Fatalf("a finished session is still registered: %v", err)
		}
		if s.state.String() != "finished" || statePrepared.String() != "prepared" {
			t.Fatalf("state names: %s, %s", s.state, statePrepared)
		}
	})
	t.Run("an unstarted session expires, a started one does not", func(t *testing.T) {
		r := newRouter(50 * time.Millisecond)
		release := make(chan struct{})
		started := make(chan struct{})
		running := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, party: &fakeParty{},
			run: func(context.Context) (*peerwire.RunResponse, error) {
				close(started)
				<-release
				return &peerwire.RunResponse{}, nil
			}}
		_ = r.add(running)
		done := make(chan error, 1)
		go func() { _, err := r.start(context.Background(), running.id); done <- err }()
		<-started
		idle := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, party: &fakeParty{}}
		_ = r.add(idle)
		waitFor(t, 5*time.Second, "the unstarted session expires", func() bool { _, err := r.get(idle.id); return err != nil })
		if _, err := r.get(running.id); err != nil {
			t.Fatalf("a running session expired with its Prepare's deadline: %v", err)
		}
		if _, err := r.start(context.Background(), idle.id); !errors.Is(err, ErrUnknownSession) {
			t.Fatalf("an expired session started: %v", err)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("abortWith ends every session of a peer, and only those", func(t *testing.T) {
		r := newRouter(time.Minute)
		pb, pc := &fakeParty{}, &fakeParty{}
		withB := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, party: pb}
		withC := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "c"}, party: pc}
		_ = r.add(withB)
		_ = r.add(withC)
		defer r.abort(withC.id)
		cause := errors.New("b convicted")
		r.abortWith("b", cause)
		if e := pb.lastAbort(); e == nil || len(e.Culprits) != 1 || e.Culprits[0] != "b" || !errors.Is(e, cause) {
			t.Fatalf("b's session aborted with %v", e)
		}
		if _, err := r.get(withB.id); err == nil {
			t.Fatal("b's session is still registered")
		}
		if _, aborted := pc.counts(); aborted != 0 {
			t.Fatal("c's session was aborted")
		}
	})
	t.Run("a coordinator beyond its depth displaces only its own oldest half of that key", func(t *testing.T) {
		r := newRouter(time.Minute)
		add := func(kind peerwire.Kind, coordinator, key string) (*session, *fakeParty) {
			p := &fakeParty{}
			s := &session{id: peerwire.NewSessionID(), kind: kind, key: key, members: []string{"a", "b", "c"}, coordinator: coordinator, party: p}
			if err := r.add(s); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.abort(s.id) })
			return s, p
		}
		// Oldest first: another coordinator's, another key's, then a's two.
		_, byC := add(peerwire.KindPresign, "c", "k1")
		_, otherKey := add(peerwire.KindPresign, "a", "k2")
		oldest, oldestP := add(peerwire.KindPresign, "a", "k1")
		newer, newerP := add(peerwire.KindPresign, "a", "k1")
		_, signing := add(peerwire.KindSign, "a", "k1")
		if !r.evictOldestPresign("a", "k1") {
			t.Fatal("nothing displaced")
		}
		if _, err := r.get(oldest.id); err == nil || oldestP.lastAbort() == nil {
			t.Fatal("a's oldest half of k1 was not displaced")
		}
		if _, err := r.get(newer.id); err != nil {
			t.Fatal("a's newer half was displaced")
		}
		for name, p := range map[string]*fakeParty{"c's half": byC, "a's half of k2": otherKey, "a's newer half": newerP, "a signing session": signing} {
			if _, aborted := p.counts(); aborted != 0 {
				t.Fatalf("%s was aborted", name)
			}
		}
		if r.evictOldestPresign("d", "k1") {
			t.Fatal("a coordinator holding nothing here displaced something")
		}
		// A disabled or reshared key's halves go, whoever coordinates.
		r.abortPresigns("k1", errors.New("key disabled"))
		for name, tc := range map[string]struct {
			p    *fakeParty
			want int
		}{"c's half": {byC, 1}, "a's newer half": {newerP, 1}, "a's half of k2": {otherKey, 0}, "a signing session": {signing, 0}} {
			if _, aborted := tc.p.counts(); aborted != tc.want {
				t.Errorf("after k1's halves were aborted, %s has %d aborts, want %d", name, aborted, tc.want)
			}
		}
	})
	t.Run("load counts computing sessions and held presignatures apart", func(t *testing.T) {
		r := newRouter(time.Minute)
		add := func(kind peerwire.Kind, coordinator, key string) {
			s := &session{id: peerwire.NewSessionID(), kind: kind, key: key, members: []string{"a", "b"}, coordinator: coordinator, party: &fakeParty{}}
			_ = r.add(s)
			t.Cleanup(func() { r.abort(s.id) })
		}
		add(peerwire.KindSign, "a", "k1")
		add(peerwire.KindSign, "b", "k1")
		add(peerwire.KindKeygen, "a", "")
		add(peerwire.KindPresign, "a", "k1")
		add(peerwire.KindPresign, "a", "k1")
		add(peerwire.KindPresign, "a", "k2")
		add(peerwire.KindPresign, "b", "k1")
		active, byA, presignsA := r.load("a", "k1")
		if active != 3 || byA != 2 || presignsA != 2 || r.active() != 3 || r.count() != 7 {
			t.Fatalf("load(a, k1) = %d, %d, %d; active %d, count %d; want 3, 2, 2; 3, 7", active, byA, presignsA, r.active(), r.count())
		}
	})
}

// TestSessionMembers: who takes part in a session, by kind: the quorum of a
// signature or presignature, the parties of a key generation, and both
// committees of a resharing, old first.
func TestSessionMembers(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *peerwire.PrepareRequest
		want string
	}{
		{"sign", &peerwire.PrepareRequest{Sign: &peerwire.SignRequest{Quorum: []string{"a", "c"}}}, "a,c"},
		{"presign", &peerwire.PrepareRequest{Presign: &peerwire.PresignRequest{Quorum: []string{"b", "c"}}}, "b,c"},
		{"keygen", &peerwire.PrepareRequest{Keygen: &peerwire.KeygenRequest{Parties: []string{"a", "b", "c"}}}, "a,b,c"},
		{"reshare", &peerwire.PrepareRequest{Reshare: &peerwire.ReshareRequest{OldParties: []string{"b", "a"}, NewParties: []string{"a", "c", "d"}}}, "b,a,c,d"},
		{"nothing", &peerwire.PrepareRequest{}, ""},
	} {
		if got := strings.Join(sessionMembers(tc.req), ","); got != tc.want {
			t.Errorf("%s: members %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestAdmitRules: before a member looks at what a session is, it decides
// whether it has room and will share it with everyone named: no convicted
// coordinator or member, at most max_sessions_per_peer computing sessions
// per coordinator and max_sessions in all. Ready presignatures neither
// count nor are counted here (preparePresign bounds them by presign.depth).
func TestAdmitRules(t *testing.T) {
	sign := func(coordinator string, quorum ...string) (string, *peerwire.PrepareRequest) {
		return coordinator, &peerwire.PrepareRequest{Session: peerwire.NewSessionID(), Kind: peerwire.KindSign, Sign: &peerwire.SignRequest{Quorum: quorum}}
	}
	presign := func(coordinator string, quorum ...string) (string, *peerwire.PrepareRequest) {
		return coordinator, &peerwire.PrepareRequest{Session: peerwire.NewSessionID(), Kind: peerwire.KindPresign, Presign: &peerwire.PresignRequest{Quorum: quorum}}
	}
	reshare := func(coordinator string, old, new []string) (string, *peerwire.PrepareRequest) {
		return coordinator, &peerwire.PrepareRequest{Session: peerwire.NewSessionID(), Kind: peerwire.KindReshare, Reshare: &peerwire.ReshareRequest{OldParties: old, NewParties: new}}
	}
	type live struct {
		kind        peerwire.Kind
		coordinator string
	}
	for _, tc := range []struct {
		name      string
		convicted []string
		live      []live
		call      func() (string, *peerwire.PrepareRequest)
		want      error // nil admitted
	}{
		{"an honest coordinator with room", nil, nil, func() (string, *peerwire.PrepareRequest) { return sign("a", "a", "b") }, nil},
		{"a convicted coordinator", []string{"a"}, nil, func() (string, *peerwire.PrepareRequest) { return sign("a", "a", "b") }, errConvicted},
		{"a convicted member, whoever coordinates", []string{"d"}, nil, func() (string, *peerwire.PrepareRequest) { return sign("c", "b", "c", "d") }, errConvicted},
		{"a convicted member of the new committee", []string{"d"}, nil, func() (string, *peerwire.PrepareRequest) {
			return reshare("c", []string{"b", "c"}, []string{"b", "c", "d"})
		}, errConvicted},
		{"a convicted member of a presignature", []string{"c"}, nil, func() (string, *peerwire.PrepareRequest) { return presign("a", "a", "b", "c") }, errConvicted},
		{"a coordinator past its share", nil, []live{{peerwire.KindSign, "a"}, {peerwire.KindKeygen, "a"}},
			func() (string, *peerwire.PrepareRequest) { return sign("a", "a", "b") }, errBusyPeer},
		{"another coordinator while one is at its share", nil, []live{{peerwire.KindSign, "a"}, {peerwire.KindSign, "a"}},
			func() (string, *peerwire.PrepareRequest) { return sign("c", "b", "c") }, nil},
		{"the node's total reached", nil, []live{{peerwire.KindSign, "a"}, {peerwire.KindSign, "a"}, {peerwire.KindSign, "c"}, {peerwire.KindSign, "c"}},
			func() (string, *peerwire.PrepareRequest) { return sign("d", "b", "d") }, ErrOverloaded},
		{"held presignatures do not count", nil, []live{{peerwire.KindPresign, "a"}, {peerwire.KindPresign, "a"}, {peerwire.KindPresign, "a"}, {peerwire.KindPresign, "a"}},
			func() (string, *peerwire.PrepareRequest) { return sign("a", "a", "b") }, nil},
		{"a presignature at the caps", nil, []live{{peerwire.KindSign, "a"}, {peerwire.KindSign, "a"}, {peerwire.KindSign, "c"}, {peerwire.KindSign, "c"}},
			func() (string, *peerwire.PrepareRequest) { return presign("a", "a", "b") }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := unitNodeWith(t, func() Config {
				c := Config{Name: "b", DataDir: t.TempDir(), MaxSessions: 4, MaxSessionsPerPeer: 2,
					Peers: []Peer{{Name: "a", Addr: "a"}, {Name: "c", Addr: "c"}, {Name: "d", Addr: "d"}}}
				c.setDefaults()
				return c
			}())
			for _, p := range tc.convicted {
				n.convict(p, peerwire.NewSessionID(), "", errors.New("test"))
			}
			for _, l := range tc.live {
				if err := n.sessions.add(&session{id: peerwire.NewSessionID(), kind: l.kind, members: []string{l.coordinator, "b"}, coordinator: l.coordinator, party: &fakeParty{}}); err != nil {
					t.Fatal(err)
				}
			}
			coordinator, req := tc.call()
			err := n.admit(coordinator, req)
			// errBusyPeer is in the message (it travels as text over
			// gRPC); it is an overload either way.
			busy := err != nil && strings.Contains(err.Error(), errBusyPeer.Error())
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == errBusyPeer && (!busy || !errors.Is(err, ErrOverloaded)):
				t.Fatalf("admit: %v, want an overload naming the busy coordinator", err)
			case tc.want != nil && tc.want != errBusyPeer && !errors.Is(err, tc.want):
				t.Fatalf("admit: %v, want %v", err, tc.want)
			case tc.want == ErrOverloaded && busy:
				t.Fatalf("admit blamed a coordinator with room: %v", err)
			}
		})
	}
}
