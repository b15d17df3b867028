package tss

import (
	"math/big"

	"github.com/bnb-chain/tss-lib/v2/crypto/paillier"

	"github.com/tkeyless/tkeyless/tss/internal/gg18"
)

// paillierCRT is a party's own Paillier key prepared for the Chinese
// remainder theorem (gg18.Own): decryption is two exponentiations by p−1
// and q−1 modulo p² and q² instead of tss-lib's one by λ(N) modulo N²,
// about a quarter of the work, and every half-result is checked for
// faults. The MtA range check (validate.go) decrypts each answer with it,
// and the signing engine (engine.go) reuses that plaintext and the same key
// for its own exponentiations. TestPaillierCRT checks it against tss-lib's
// Decrypt.
type paillierCRT struct{ own *gg18.Own }

func newPaillierCRT(sk *paillier.PrivateKey) (*paillierCRT, error) {
	own, err := gg18.NewOwn(sk)
	if err != nil {
		return nil, err
	}
	return &paillierCRT{own: own}, nil
}

// decrypt returns the plaintext of c in [0, N). c must be a unit modulo N²,
// as every honest ciphertext is.
func (k *paillierCRT) decrypt(c *big.Int) (*big.Int, error) { return k.own.Decrypt(c) }
