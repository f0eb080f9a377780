package ca

import (
	"bytes"
	"crypto/rand"
	"encoding/asn1"
	"math/big"
	"testing"
)

// TestDERSerial holds the serial number's encoding to encoding/asn1's for
// the edge cases of DER integers.
func TestDERSerial(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
	}{
		{"zero", []byte{0}},
		{"empty", nil},
		{"leading zeros", []byte{0, 0, 0x12, 0x34}},
		{"top bit set", []byte{0x80, 1}},
		{"leading zero, then top bit", []byte{0, 0xff}},
		{"one byte", []byte{0x7f}},
		{"256 bits", bytes.Repeat([]byte{0xff}, 32)},
		{"256 bits after zeros", append([]byte{0, 0}, bytes.Repeat([]byte{0xaa}, 32)...)},
	}
	for range 4 {
		var s [serialLen]byte
		if err := readSerial(rand.Reader, &s); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct {
			name string
			b    []byte
		}{"random", s[:]})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := derSerial(nil, tc.b)
			if err != nil {
				t.Fatal(err)
			}
			der, err := asn1.Marshal(new(big.Int).SetBytes(tc.b))
			if err != nil {
				t.Fatal(err)
			}
			if want := der[2:]; !bytes.Equal(got, want) { // after tag and one-byte length
				t.Fatalf("derSerial(%x) = %x, want %x", tc.b, got, want)
			}
		})
	}
	if _, err := derSerial(nil, bytes.Repeat([]byte{1}, 33)); err == nil {
		t.Error("a 264-bit serial: want an error")
	}
}

// TestReadSerial checks the serial's shape: positive, 127 bits.
func TestReadSerial(t *testing.T) {
	for range 64 {
		var s [serialLen]byte
		if err := readSerial(rand.Reader, &s); err != nil {
			t.Fatal(err)
		}
		if n := new(big.Int).SetBytes(s[:]); n.BitLen() != 127 {
			t.Fatalf("serial %x has %d bits, want 127", s, n.BitLen())
		}
	}
	if err := readSerial(bytes.NewReader(make([]byte, serialLen-1)), new([serialLen]byte)); err == nil {
		t.Error("a short random source: want an error")
	}
}
