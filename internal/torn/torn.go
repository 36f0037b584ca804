// Package torn holds what the log (wal) and the archive share in telling
// a write that a crash interrupted from damage: a disk persists a write
// in whole sectors, so an interrupted one leaves some of its sectors
// unwritten, reading as zeros in a file that only grows.
package torn

// SectorSize is the unit in which a disk persists a write.
const SectorSize = 512

// AllZero reports whether every byte of b is 0.
func AllZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// LostSector reports whether data[lo:hi], a record that fails its
// checksum, holds the part of a sector that is all zeros: what a lost
// sector leaves. At least 16 bytes of it (or the whole record, if
// shorter), so that a zero byte or two of damage do not pass for one.
func LostSector(data []byte, lo, hi int) bool {
	for sec := lo / SectorSize * SectorSize; sec < hi; sec += SectorSize {
		a, b := max(sec, lo), min(sec+SectorSize, hi)
		if b-a >= min(16, hi-lo) && AllZero(data[a:b]) {
			return true
		}
	}
	return false
}
