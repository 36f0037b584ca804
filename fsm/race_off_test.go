//go:build !race

package fsm

// raceOn: the race detector is on (sync.Pool then drops items at random,
// so allocation counts are not exact).
const raceOn = false
