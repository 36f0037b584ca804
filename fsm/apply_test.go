package fsm

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestApplyScenarios runs the state machine scripts in testdata/apply/*.
// Each command proposes one record; the output is the saga afterwards, or
// the error. After an error the harness checks that nothing changed.
// Regenerate expected output with: go test ./fsm -run Scenarios -rewrite
func TestApplyScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/apply", func(t *testing.T, path string) {
		sagas := map[string]*Saga{}
		defs := map[string]*Definition{}
		var clock int64
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			clock++
			id := "s1"
			d.MaybeScanArgs(t, "id", &id)
			r := &Record{Kind: 0, Saga: id, At: clock}
			d.MaybeScanArgs(t, "step", &r.Step)
			d.MaybeScanArgs(t, "attempt", &r.Attempt)
			d.MaybeScanArgs(t, "actor", &r.Actor)
			d.MaybeScanArgs(t, "reason", &r.Reason)
			var output, errMsg string
			if d.MaybeScanArgs(t, "output", &output) {
				r.Output = []byte(output)
			}
			if d.MaybeScanArgs(t, "err", &errMsg) {
				r.Err = &ErrorInfo{Message: errMsg}
			}
			r.Final = d.HasArg("final")
			switch d.Cmd {
			case "start":
				r.Kind = KindSagaStarted
				r.Start = &StartInfo{Definition: "def", Version: 1, Steps: parseSteps(t, d)}
				d.MaybeScanArgs(t, "key", &r.Start.IdempotencyKey)
			case "define":
				r.Kind = KindDefine
				r.Def = &Definition{Steps: parseSteps(t, d)}
				d.ScanArgs(t, "name", &r.Def.Name)
				d.ScanArgs(t, "version", &r.Def.Version)
				before := defs[r.Def.Name]
				nd, err := ApplyDefinition(before, r)
				if err != nil {
					if defs[r.Def.Name] != before {
						t.Fatal("a rejected definition changed the table")
					}
					return "error: " + err.Error()
				}
				defs[nd.Name] = nd
				return fmt.Sprintf("%s v%d: %d steps", nd.Name, nd.Version, len(nd.Steps))
			case "show":
				return describe(sagas[id])
			default:
				k, ok := map[string]Kind{
					"started": KindStepStarted, "complete": KindStepCompleted, "fail": KindStepFailed,
					"comp-start": KindCompStarted, "comp-done": KindCompCompleted, "comp-fail": KindCompFailed,
					"abort": KindAborted, "retry": KindRetried, "resolve": KindResolved, "raw": Kind(0),
				}[d.Cmd]
				if !ok {
					t.Fatalf("unknown command %q", d.Cmd)
				}
				r.Kind = k
				var raw int
				if d.MaybeScanArgs(t, "kind", &raw) {
					r.Kind = Kind(raw)
				}
			}
			before := sagas[id]
			var snapshot *Saga
			if before != nil {
				snapshot = before.Clone()
			}
			next, err := Apply(before, r)
			if err != nil {
				if next != nil {
					t.Fatalf("Apply returned a state with an error")
				}
				if !reflect.DeepEqual(before, snapshot) {
					t.Fatalf("a rejected record mutated the saga:\n%+v\n%+v", before, snapshot)
				}
				return "error: " + err.Error()
			}
			if before != nil && !reflect.DeepEqual(before, snapshot) {
				t.Fatalf("Apply mutated its input")
			}
			sagas[id] = next
			return describe(next)
		})
	})
}

func parseSteps(t *testing.T, d *datadriven.TestData) []StepDef {
	arg, ok := d.Arg("steps")
	if !ok {
		return nil
	}
	var out []StepDef
	for _, v := range arg.Vals {
		// name:compensation[:after+after...]
		name, rest, _ := strings.Cut(v, ":")
		comp, after, _ := strings.Cut(rest, ":")
		sd := StepDef{Name: name, Compensation: comp}
		if after != "" {
			sd.After = strings.Split(after, "+")
		}
		out = append(out, sd)
	}
	return out
}

func describe(s *Saga) string {
	if s == nil {
		return "<none>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s current=%d seq=%d\n", s.ID, s.State, s.Current, s.Seq)
	for i, st := range s.Steps {
		fmt.Fprintf(&b, "  %d %s: %s", i, st.Name, st.Status)
		if st.Attempts > 0 {
			fmt.Fprintf(&b, " attempts=%d", st.Attempts)
		}
		if st.CompAttempts > 0 {
			fmt.Fprintf(&b, " comp_attempts=%d", st.CompAttempts)
		}
		if st.Uncertain {
			b.WriteString(" uncertain")
		}
		if st.Stuck {
			b.WriteString(" stuck")
		}
		if st.Compensation == "" {
			b.WriteString(" (no compensation)")
		}
		if st.CompErr != nil {
			fmt.Fprintf(&b, " comp_err=%s", st.CompErr.Message)
		}
		b.WriteString("\n")
	}
	if s.LastError != nil {
		fmt.Fprintf(&b, "  last error: %s\n", s.LastError.Error())
	}
	if p := Pending(s); len(p) > 0 {
		fmt.Fprintf(&b, "  pending compensations: %v\n", p)
	}
	return b.String()
}
