package main

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// signingSlotsPerSigner is --max-signing's default per signer endpoint: a signer runs about as
// many sessions at once as it has cores, and a small signer has two. More in flight only makes
// every signature slower, until none finishes before its deadline.
const signingSlotsPerSigner = 2

// shedFlags are the flags of the edge's admission control (tlsglue.ShedPolicy).
type shedFlags struct {
	on          bool
	maxSigning  int
	maxQueue    int
	clientRate  float64
	clientBurst int
	ipv4Prefix  int
	ipv6Prefix  int
	allow       []string
	maxClients  int
	clientShare int
	target      time.Duration
}

func (s *shedFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&s.on, "shed", true, "shed full handshakes the signers cannot serve in time (the flags below); --shed=false admits every one (a baseline for load tests, or when a proxy in front sheds)")
	f.IntVar(&s.maxSigning, "max-signing", 0, fmt.Sprintf("signatures in flight at once on this edge; beyond them handshakes queue (0: %d per signer endpoint; %d per core with a file:// key)", signingSlotsPerSigner, 4*signingSlotsPerSigner))
	f.DurationVar(&s.target, "sign-latency-target", 0, "how long a signature should take; the signing slots shrink below --max-signing while signatures take longer, and grow back while they are faster (0: a quarter of --sign-timeout)")
	f.IntVar(&s.maxQueue, "max-signing-queue", 0, "full handshakes that may wait for a signing slot; beyond them one is shed at once (0: as many as --max-signing)")
	f.Float64Var(&s.clientRate, "client-rate", tlsglue.DefaultClientRate, "full handshakes per second one client prefix may start (0: no per-client budget)")
	f.IntVar(&s.clientBurst, "client-burst", tlsglue.DefaultClientBurst, "full handshakes one client prefix may start at once after a quiet spell")
	f.IntVar(&s.ipv4Prefix, "client-ipv4-prefix", tlsglue.DefaultIPv4Prefix, "IPv4 clients share a budget per prefix of this length (32: one per address)")
	f.IntVar(&s.ipv6Prefix, "client-ipv6-prefix", tlsglue.DefaultIPv6Prefix, "IPv6 clients share a budget per prefix of this length (128: one per address)")
	f.StringArrayVar(&s.allow, "client-allow", nil, "a client address or prefix (CIDR) with no full-handshake budget, e.g. a health checker; repeat it")
	f.IntVar(&s.clientShare, "client-share", 0, "signatures one client prefix may have in flight and queued together, so a flood within its budget leaves room to others (0: half of --max-signing + --max-signing-queue)")
	f.IntVar(&s.maxClients, "max-clients", tlsglue.DefaultMaxClients, "client prefixes tracked at once; beyond them (none idle) new prefixes share one budget")
}

// shedder builds the policy, with --max-signing's default from the signers in ref and
// --sign-latency-target's from the handshake deadline.
func (s *shedFlags) shedder(ref keyRef, signTimeout time.Duration) (*tlsglue.Shedder, error) {
	if !s.on {
		return tlsglue.NewShedder(tlsglue.ShedPolicy{}) // counts in flight, sheds nothing
	}
	p := tlsglue.ShedPolicy{
		MaxInFlight: s.maxSigning,
		MaxQueue:    s.maxQueue,
		ClientRate:  s.clientRate,
		ClientBurst: s.clientBurst,
		IPv4Prefix:  s.ipv4Prefix,
		IPv6Prefix:  s.ipv6Prefix,
		MaxClients:  s.maxClients,
		ClientShare: s.clientShare,
		// A quarter: the keyless client gives its first signer two thirds of the deadline
		// before it fails over, and a handshake may also have queued for a slot.
		TargetLatency: s.target,
	}
	if p.TargetLatency == 0 {
		p.TargetLatency = signTimeout / 4
	}
	if p.MaxInFlight == 0 {
		if ref.scheme == "file" {
			p.MaxInFlight = 4 * signingSlotsPerSigner * runtime.GOMAXPROCS(0)
		} else {
			p.MaxInFlight = signingSlotsPerSigner * len(ref.endpoints)
		}
	}
	for _, a := range s.allow {
		pfx, err := parseClientPrefix(a)
		if err != nil {
			return nil, err
		}
		p.Allow = append(p.Allow, pfx)
	}
	for name, v := range map[string]int{"--client-ipv4-prefix": p.IPv4Prefix, "--client-ipv6-prefix": p.IPv6Prefix} {
		if v < 1 {
			return nil, fmt.Errorf("%s %d: want a prefix length of at least 1", name, v)
		}
	}
	sh, err := tlsglue.NewShedder(p)
	if err != nil {
		return nil, fmt.Errorf("--max-signing, --client-*: %w", err)
	}
	return sh, nil
}

// parseClientPrefix reads an --client-allow entry: an address (one host) or a CIDR prefix.
func parseClientPrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("--client-allow %q: %w (want an address or a prefix such as 192.0.2.0/24)", s, err)
		}
		return pfx.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--client-allow %q: %w (want an address or a prefix such as 192.0.2.0/24)", s, err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
