package source

// MaxInputSize is the largest file, stdin, Secret value or HTTP body a
// source reads, in bytes. Certificate material is far smaller; the cap stops
// a hostile or mistaken input from exhausting memory.
const MaxInputSize = 16 << 20
