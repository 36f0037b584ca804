// Package compensation holds the registry of named step actions and
// compensation handlers, the retry policy with exponential backoff and
// jitter, the stable idempotency keys handlers receive, and the clock that
// backoff and deadlines run on.
//
// Names are durable: they are written into the saga log and looked up again
// after a restart, possibly by another build of the program. Choose them by
// hand ("delete_uploaded_file"); never derive them from function names.
package compensation

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Errors returned by the registry. Match them with errors.Is.
var (
	// ErrDuplicateName: Register or RegisterAction with a name already taken.
	ErrDuplicateName = errors.New("compensation: name already registered")
	// ErrInvalidName: the name is empty, too long or has characters
	// outside letters, digits and . _ : @ -.
	ErrInvalidName = errors.New("compensation: invalid name")
	// ErrUnknownName: a definition names a handler or action that is not
	// registered (wrapped in an *UnknownNamesError listing all of them).
	ErrUnknownName = errors.New("compensation: unknown handler or action")
	// ErrNilFunc: Register with a nil function.
	ErrNilFunc = errors.New("compensation: nil function")
)

// Kind says whether a call runs a step's action or its compensation.
type Kind string

// Call kinds; they are part of the idempotency key.
const (
	KindAction       Kind = "action"
	KindCompensation Kind = "compensation"
)

// Call is what an action or a compensation handler receives.
type Call struct {
	SagaID     string
	Definition string
	// Version is the version of the definition the saga started with.
	Version   int
	Step      string // the step's name
	StepIndex int
	Kind      Kind
	// Input is the saga's input, as given to Start.
	Input []byte
	// Output is the step's recorded output (for a compensation: what the
	// action returned, e.g. the id of the file it uploaded). Empty for an
	// uncertain step whose action never reported.
	Output []byte
	// Uncertain is true when the step's action may or may not have run
	// (it was running when the process stopped or the saga was aborted):
	// a compensation must then tolerate finding nothing to undo.
	Uncertain bool
	// Attempt counts from 1 and grows across retries and restarts.
	Attempt int
	// IdempotencyKey is identical for every attempt of this call, across
	// retries, crashes and failover: use it to make the effect happen once.
	IdempotencyKey string
	// User is the user context recorded when the saga started.
	User string
}

// IdempotencyKey is the stable key of one step's action or compensation.
func IdempotencyKey(sagaID, step string, kind Kind) string {
	return sagaID + "/" + step + "/" + string(kind)
}

// Handler undoes a step. It runs at least once; it must be idempotent
// (use Call.IdempotencyKey) and succeed when there is nothing to undo.
type Handler func(ctx context.Context, c Call) error

// Action performs a step in engine-driven sagas and returns its output,
// which is recorded and later handed to the step's compensation.
type Action func(ctx context.Context, c Call) (output []byte, err error)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9._:@-]{1,128}$`)

// Registry maps durable names to handlers and actions. It is safe for
// concurrent use. The zero value is not usable: call NewRegistry.
type Registry struct {
	mu       sync.RWMutex
	handlers map[string]Handler
	actions  map[string]Action
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{handlers: map[string]Handler{}, actions: map[string]Action{}}
}

// ValidName reports whether Register and RegisterAction accept name: 1-128
// of letters, digits and . _ : @ -. Configuration that names handlers
// (remote endpoints, say) checks its names with it before registering.
func ValidName(name string) bool { return namePattern.MatchString(name) }

func checkName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: %q (1-128 of letters, digits, . _ : @ -)", ErrInvalidName, name)
	}
	return nil
}

// Register adds a compensation handler. Registering a name twice is an
// error (ErrDuplicateName): a second silent registration would change what
// running sagas undo.
func (r *Registry) Register(name string, h Handler) error {
	if err := checkName(name); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: handler %q", ErrNilFunc, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.handlers[name]; ok {
		return fmt.Errorf("%w: handler %q", ErrDuplicateName, name)
	}
	r.handlers[name] = h
	return nil
}

// RegisterAction adds a step action (names are separate from handlers').
func (r *Registry) RegisterAction(name string, a Action) error {
	if err := checkName(name); err != nil {
		return err
	}
	if a == nil {
		return fmt.Errorf("%w: action %q", ErrNilFunc, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.actions[name]; ok {
		return fmt.Errorf("%w: action %q", ErrDuplicateName, name)
	}
	r.actions[name] = a
	return nil
}

// Handler returns the compensation handler registered under name.
func (r *Registry) Handler(name string) (Handler, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	h, ok := r.handlers[name]
	return h, ok
}

// Action returns the action registered under name.
func (r *Registry) Action(name string) (Action, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.actions[name]
	return a, ok
}

// HandlerNames returns the registered handler names, sorted.
func (r *Registry) HandlerNames() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.handlers))
	for n := range r.handlers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// UnknownNamesError lists every name a definition uses that is not
// registered.
type UnknownNamesError struct {
	Handlers []string
	Actions  []string
}

func (e *UnknownNamesError) Error() string {
	var parts []string
	if len(e.Handlers) > 0 {
		parts = append(parts, "compensation handlers "+strings.Join(e.Handlers, ", "))
	}
	if len(e.Actions) > 0 {
		parts = append(parts, "actions "+strings.Join(e.Actions, ", "))
	}
	return "compensation: not registered: " + strings.Join(parts, "; ") +
		" (register them before defining a saga that uses them)"
}

// Unwrap makes errors.Is(err, ErrUnknownName) true.
func (e *UnknownNamesError) Unwrap() error { return ErrUnknownName }

// Check returns an *UnknownNamesError naming every handler and action in
// the lists that is not registered (empty names are skipped), or nil.
func (r *Registry) Check(handlers, actions []string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var e UnknownNamesError
	for _, n := range handlers {
		if _, ok := r.handlers[n]; n != "" && !ok {
			e.Handlers = append(e.Handlers, n)
		}
	}
	for _, n := range actions {
		if _, ok := r.actions[n]; n != "" && !ok {
			e.Actions = append(e.Actions, n)
		}
	}
	if len(e.Handlers)+len(e.Actions) == 0 {
		return nil
	}
	return &e
}

// permanent marks an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so that the engine does not retry the call that
// returned it. From an action: the step fails at once and compensation
// begins. From a compensation handler: the saga is STUCK at once, waiting
// for an operator to retry or resolve it (an operator's Retry runs the
// handler again).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err was wrapped by Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}

// Policy bounds retries: delays grow from InitialBackoff by Multiplier up
// to MaxBackoff, each shortened by a random fraction up to Jitter; retries
// stop after MaxAttempts attempts (0: no bound) or once MaxElapsed has
// passed since the first attempt (0: no bound). Its fields match
// fsm.RetryPolicy, which converts to it.
type Policy struct {
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	Jitter         float64
	MaxAttempts    int
	MaxElapsed     time.Duration
}

var defaultCompensationPolicy = Policy{
	InitialBackoff: 100 * time.Millisecond,
	MaxBackoff:     30 * time.Second,
	Multiplier:     2,
	Jitter:         0.2,
	MaxElapsed:     10 * time.Minute,
}

// DefaultCompensationPolicy returns the policy used for compensations whose
// definition sets none: up to 10 minutes, backing off from 100ms to 30s.
func DefaultCompensationPolicy() Policy { return defaultCompensationPolicy }

// DefaultActionPolicy returns the policy used for actions whose definition
// sets none: a single attempt.
func DefaultActionPolicy() Policy { return Policy{MaxAttempts: 1} }

// IsZero reports whether no field is set.
func (p Policy) IsZero() bool { return p == Policy{} }

// Next returns the delay before the next attempt, given the number of
// attempts made so far (≥ 1), the time since the first attempt, and a
// random number in [0,1) for jitter. ok is false when the budget is spent.
func (p Policy) Next(attempts int, elapsed time.Duration, rnd float64) (delay time.Duration, ok bool) {
	if p.MaxAttempts > 0 && attempts >= p.MaxAttempts {
		return 0, false
	}
	mult := p.Multiplier
	if mult < 1 {
		mult = 1
	}
	d := float64(p.InitialBackoff) * math.Pow(mult, float64(attempts-1))
	if p.MaxBackoff > 0 && d > float64(p.MaxBackoff) {
		d = float64(p.MaxBackoff)
	}
	if d > float64(math.MaxInt64/2) {
		d = float64(math.MaxInt64 / 2)
	}
	j := p.Jitter
	if j > 1 {
		j = 1
	}
	d -= d * j * rnd
	delay = time.Duration(d)
	if p.MaxElapsed > 0 && elapsed+delay > p.MaxElapsed {
		return 0, false
	}
	return delay, true
}
