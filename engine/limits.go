package engine

import (
	"fmt"
	"unicode/utf8"
)

// Limits on the caller's strings that a saga records. They keep a record,
// its index keys and every reader of them (the admin API's JSON, the
// console, sagactl) to a size an operator can use, and they are checked
// before anything is logged: a Start or an operator action over a limit is
// ErrInvalidArgument and changes nothing. Input and outputs are bounded by
// the log's record size (Options.WAL.MaxRecordSize) instead.
const (
	MaxIdempotencyKey = 512  // bytes of StartOptions.IdempotencyKey
	MaxUser           = 512  // bytes of StartOptions.User
	MaxMetaPairs      = 64   // entries of StartOptions.Meta
	MaxMetaKey        = 128  // bytes of a Meta key (not empty)
	MaxMetaValue      = 1024 // bytes of a Meta value
	MaxActor          = 256  // bytes of an operator action's actor
	MaxReason         = 4096 // bytes of an operator action's reason
)

// checkText refuses a string that is longer than limit bytes or is not
// valid UTF-8 (what a JSON reader could not show as it is).
func checkText(what, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrInvalidArgument, what, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidArgument, what)
	}
	return nil
}

// startTextCheck is checkStartText; a test swaps it to write what a log
// from before the limits could hold.
var startTextCheck = checkStartText

// checkStartText checks the strings of a Start against the limits.
func checkStartText(o StartOptions) error {
	if err := checkText("the idempotency key", o.IdempotencyKey, MaxIdempotencyKey); err != nil {
		return err
	}
	if err := checkText("the user", o.User, MaxUser); err != nil {
		return err
	}
	if len(o.Meta) > MaxMetaPairs {
		return fmt.Errorf("%w: meta has %d entries, over the limit of %d", ErrInvalidArgument, len(o.Meta), MaxMetaPairs)
	}
	for k, v := range o.Meta {
		if k == "" {
			return fmt.Errorf("%w: meta has an empty key", ErrInvalidArgument)
		}
		if err := checkText(fmt.Sprintf("meta key %.40q", k), k, MaxMetaKey); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("the value of meta key %q", k), v, MaxMetaValue); err != nil {
			return err
		}
	}
	return nil
}

// checkOperatorText checks an operator action's actor and reason.
func checkOperatorText(actor, reason string) error {
	if err := checkText("the actor", actor, MaxActor); err != nil {
		return err
	}
	return checkText("the reason", reason, MaxReason)
}
