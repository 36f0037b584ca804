package fsm

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

// TestDefinitionRefusesAStepNameUsedTwice, with few steps (names compared
// by a scan) and many (by a map).
func TestDefinitionRefusesAStepNameUsedTwice(t *testing.T) {
	for _, n := range []int{2, 5, 16, 17, 40} {
		d := Definition{Name: "d", Version: 1}
		for i := range n {
			d.Steps = append(d.Steps, StepDef{Name: "s" + strconv.Itoa(i)})
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("%d distinct steps: %v", n, err)
		}
		d.Steps[n-1].Name = d.Steps[n/2-1].Name
		var de *DefinitionError
		if err := d.Validate(); !errors.As(err, &de) || len(de.Problems) != 1 || !strings.Contains(de.Problems[0], "used twice") {
			t.Fatalf("%d steps, the last named like step %d: %v", n, n/2-1, err)
		}
	}
}
