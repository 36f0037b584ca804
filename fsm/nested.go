package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// Nested sagas. A step with StepDef.Child runs a saga of another
// definition as a whole (the engine starts it, with Parent and Depth set,
// and waits for it): the step is done when the child completes, and fails
// when the child fails, having compensated itself first. Undoing the step
// undoes the child as a whole: a COMPLETED child is reverted (KindReverted:
// COMPLETED → COMPENSATING, its done steps compensated as if its last step
// had failed, ending FAILED). This is the one way out of COMPLETED, and
// only for a child: see Apply.

// ChildID is the id of the child saga that step i of saga parent runs:
// parent.i, or a hash of it where that would be over the id limit. The
// engine starts children under it; a removal (KindRemoved) finds a
// parent's children by it.
func ChildID(parent string, i int) string {
	id := parent + "." + strconv.Itoa(i)
	if ValidID(id) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "child." + hex.EncodeToString(sum[:16])
}

// ChildLike reports whether id has a form ChildID gives: <parent>.<digits>
// or child.<32 hex digits>. A caller-chosen id of that form could be the
// id a child step of another saga needs; the engine refuses it.
func ChildLike(id string) bool {
	if rest, ok := strings.CutPrefix(id, "child."); ok && len(rest) == 32 && isHex(rest) {
		return true
	}
	i := strings.LastIndexByte(id, '.')
	if i <= 0 || i == len(id)-1 {
		return false
	}
	for _, c := range id[i+1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// MaxDepth bounds the nesting of child sagas: a top-level saga has depth
// 0, its children 1, and so on; no saga starts deeper than MaxDepth.
const MaxDepth = 4

// revertable checks that n may be reverted: a COMPLETED child saga.
func revertable(n *Saga, illegal func(string, ...any) error) error {
	if n.Parent == "" {
		return illegal("only a child saga can be reverted; a top-level saga's COMPLETED is final")
	}
	if n.State != StateCompleted {
		return illegal("only a COMPLETED child saga can be reverted, this one is %s", n.State)
	}
	return nil
}

func revertError(r *Record) *ErrorInfo {
	msg := r.Reason
	if msg == "" {
		msg = "reverted by its parent saga"
	}
	if r.Actor != "" {
		msg += " (by " + r.Actor + ")"
	}
	return &ErrorInfo{Kind: "reverted", Message: msg}
}
