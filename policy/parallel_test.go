package policy

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// fanOutPolicy is an operation whose milestones form a DAG: root, then
// three branches after it at once, then join after every branch.
const fanOutPolicy = `enable_saga: true
saga_operations: [fan]
operations:
  fan:
    milestones:
      - {name: root, compensation: undo}
      - {name: b1, compensation: undo, after: [root]}
      - {name: b2, compensation: undo, after: [root]}
      - {name: b3, compensation: undo, after: root}
      - {name: join, compensation: undo, after: [b1, b2, b3]}
`

// Bad dependencies are refused when the policy is loaded, every problem
// named at once, and the policy in force stays as it was.
func TestBadAfterIsATypedErrorThatChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, fanOutPolicy)
	m := newManager(t, Options{File: path, NoWatch: true})
	before := m.Snapshot()
	writeFile(t, path, `enable_saga: true
saga_operations: [fan]
operations:
  fan:
    milestones:
      - {name: a, after: [c]}
      - {name: b, after: [nope]}
      - {name: c, after: [a]}
      - {name: d, after: [d]}
`)
	err := m.Reload()
	var ve *ValidationError
	if !errors.Is(err, ErrInvalidPolicy) || !errors.As(err, &ve) {
		t.Fatalf("reload with bad after: %v; want a *ValidationError", err)
	}
	for _, want := range []string{`unknown step "nope"`, `cycle: "a" after "c" after "a"`, `"d": after itself`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %s:\n%v", want, err)
		}
	}
	if m.Snapshot() != before {
		t.Fatal("a refused policy replaced the one in force")
	}
	// The same through the Go API, and JSON field names in a file.
	bad := &Policy{Operations: map[string]*Operation{"fan": {Milestones: []Milestone{{Name: "x", After: []string{"y"}}}}}}
	if err := m.Set(bad); !errors.Is(err, ErrInvalidPolicy) || m.Snapshot() != before {
		t.Fatalf("Set with an unknown after: %v (snapshot replaced: %v)", err, m.Snapshot() != before)
	}
	p, err := Parse("f.json", []byte(`{"operations": {"op": {"milestones": [{"name": "a"}, {"name": "b", "after": ["a"]}], "durability": "pipelined"}}}`))
	must(t, err)
	if err := p.Validate("f.json", nil); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "pipelined") {
		t.Fatalf("pipelined durability with after: %v", err)
	}
	if got := p.Operations["op"].Milestones[1].After; len(got) != 1 || got[0] != "a" {
		t.Fatalf("after from JSON: %v", got)
	}
}
