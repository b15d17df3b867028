package p256

import (
	"crypto/elliptic"
	"crypto/rand"
	"math/big"
	"testing"
)

var ec = elliptic.P256()

func randScalar(t testing.TB) *big.Int {
	k, err := rand.Int(rand.Reader, Order)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randPoint(t testing.TB) (*Point, *big.Int, *big.Int) {
	x, y := ec.ScalarBaseMult(randScalar(t).Bytes())
	p, err := FromAffine(x, y)
	if err != nil {
		t.Fatal(err)
	}
	return p, x, y
}

// reference is Σ ks[i]·(xs[i], ys[i]) + g·G with crypto/elliptic; ok is
// false for the point at infinity.
func reference(xs, ys, ks []*big.Int, g *big.Int) (x, y *big.Int, ok bool) {
	x, y = new(big.Int), new(big.Int)
	add := func(ax, ay *big.Int) {
		if ax.Sign() == 0 && ay.Sign() == 0 {
			return
		}
		if x.Sign() == 0 && y.Sign() == 0 {
			x, y = ax, ay
			return
		}
		x, y = ec.Add(x, y, ax, ay)
	}
	for i := range xs {
		k := new(big.Int).Mod(ks[i], Order)
		add(ec.ScalarMult(xs[i], ys[i], k.Bytes()))
	}
	if g != nil {
		add(ec.ScalarBaseMult(new(big.Int).Mod(g, Order).Bytes()))
	}
	return x, y, !(x.Sign() == 0 && y.Sign() == 0)
}

func check(t *testing.T, name string, ps []*Point, xs, ys, ks []*big.Int, g *big.Int) {
	t.Helper()
	got := MultiScalarMult(ps, ks, g)
	wx, wy, ok := reference(xs, ys, ks, g)
	if !ok {
		if got.IsInfinity() != 1 {
			t.Fatalf("%s: want the point at infinity", name)
		}
		return
	}
	gx, gy, err := Affine(got)
	if err != nil {
		t.Fatalf("%s: %v, want (%x, %x)", name, err, wx, wy)
	}
	if gx.Cmp(wx) != 0 || gy.Cmp(wy) != 0 {
		t.Fatalf("%s: got (%x, %x), want (%x, %x)", name, gx, gy, wx, wy)
	}
}

// TestMultiScalarMult checks the variable-time multi-scalar multiplication
// against crypto/elliptic's one multiplication per point, for random
// inputs and the edge scalars.
func TestMultiScalarMult(t *testing.T) {
	qm1 := new(big.Int).Sub(Order, big.NewInt(1))
	max256 := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))
	edges := []*big.Int{big.NewInt(0), big.NewInt(1), big.NewInt(2), big.NewInt(15), big.NewInt(16), big.NewInt(17), big.NewInt(-1),
		qm1, Order, new(big.Int).Add(Order, big.NewInt(1)), max256, new(big.Int).Lsh(big.NewInt(1), 255), new(big.Int).Lsh(big.NewInt(1), 128)}
	for n := 0; n <= 10; n++ {
		for range 8 {
			ps := make([]*Point, n)
			xs, ys, ks := make([]*big.Int, n), make([]*big.Int, n), make([]*big.Int, n)
			for i := range n {
				ps[i], xs[i], ys[i] = randPoint(t)
				ks[i] = randScalar(t)
				if i%3 == 1 {
					ks[i].Rsh(ks[i], 128) // batch weights are 128 bits
				}
			}
			check(t, "random", ps, xs, ys, ks, nil)
			check(t, "random+G", ps, xs, ys, ks, randScalar(t))
		}
	}
	p, x, y := randPoint(t)
	for _, k := range edges {
		for _, g := range []*big.Int{nil, big.NewInt(0), k} {
			check(t, "edge "+k.String(), []*Point{p}, []*big.Int{x}, []*big.Int{y}, []*big.Int{k}, g)
		}
	}
	// The same point twice (the addition must double), and a point with
	// its negation (the sum is infinity).
	k := randScalar(t)
	check(t, "same point", []*Point{p, p}, []*big.Int{x, x}, []*big.Int{y, y}, []*big.Int{k, k}, nil)
	negK := new(big.Int).Sub(Order, k)
	check(t, "cancel", []*Point{p, p}, []*big.Int{x, x}, []*big.Int{y, y}, []*big.Int{k, negK}, nil)
	check(t, "cancel with G", []*Point{p}, []*big.Int{x}, []*big.Int{y}, []*big.Int{big.NewInt(0)}, big.NewInt(0))
}

func TestWNAF(t *testing.T) {
	for range 200 {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			t.Fatal(err)
		}
		digits := wNAF(k)
		sum := new(big.Int)
		last := -window
		for i, d := range digits {
			if d == 0 {
				continue
			}
			if d%2 == 0 || d >= 1<<(window-1) || d <= -(1<<(window-1)) {
				t.Fatalf("digit %d at %d is not odd and below 2^(w−1)", d, i)
			}
			if i-last < window {
				t.Fatalf("non-zero digits at %d and %d are closer than %d", last, i, window)
			}
			last = i
			sum.Add(sum, new(big.Int).Lsh(big.NewInt(int64(d)), uint(i)))
		}
		if sum.Cmp(new(big.Int).SetBytes(k)) != 0 {
			t.Fatalf("digits of %x sum to %x", k, sum)
		}
	}
}

func TestFromAffineRefuses(t *testing.T) {
	_, x, y := randPoint(t)
	for name, c := range map[string][2]*big.Int{
		"infinity":  {new(big.Int), new(big.Int)},
		"off curve": {x, new(big.Int).Add(y, big.NewInt(1))},
		"negative":  {new(big.Int).Neg(x), y},
		"too long":  {new(big.Int).Lsh(x, 256), y},
		"nil":       {nil, y},
		"x ≥ p":     {new(big.Int).Add(x, ec.Params().P), y},
	} {
		if _, err := FromAffine(c[0], c[1]); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := Affine(NewPoint()); err == nil {
		t.Error("Affine(infinity) succeeded")
	}
}

// BenchmarkMultiScalarMult is a round-7 batch check of two peers (nine
// points, four of them with 128-bit weights) against one multiplication
// per point.
func BenchmarkMultiScalarMult(b *testing.B) {
	ps := make([]*Point, 9)
	xs, ys, ks := make([]*big.Int, 9), make([]*big.Int, 9), make([]*big.Int, 9)
	for i := range ps {
		ps[i], xs[i], ys[i] = randPoint(b)
		ks[i] = randScalar(b)
		if i >= 5 {
			ks[i].Rsh(ks[i], 128)
		}
	}
	g := randScalar(b)
	b.Run("straus", func(b *testing.B) {
		for b.Loop() {
			MultiScalarMult(ps, ks, g)
		}
	})
	b.Run("elliptic", func(b *testing.B) {
		for b.Loop() {
			reference(xs, ys, ks, g)
		}
	})
}
