package engine

// The one home of what an engine user needs. The state machine (package
// fsm) and the handler registry (package compensation) define these; the
// engine re-exports them under the same identity, so an application
// imports engine alone, and errors.Is and type switches match whichever
// name is used.

import (
	"context"
	"errors"
	"log/slog"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
)

// SagaState is the state of a saga: IN_PROGRESS, COMPENSATING, and the
// terminal COMPLETED and FAILED; STUCK waits for an operator.
type SagaState = fsm.SagaState

// Saga states.
const (
	StateInProgress   = fsm.StateInProgress
	StateCompensating = fsm.StateCompensating
	StateCompleted    = fsm.StateCompleted
	StateFailed       = fsm.StateFailed
	StateStuck        = fsm.StateStuck
)

// UncertainPolicy says what recovery does with a step whose action was
// running when the process stopped (StepDef.OnUncertain).
type UncertainPolicy = fsm.UncertainPolicy

// Uncertain-step policies.
const (
	// UncertainCompensate (the default) aborts the saga and compensates
	// the step with the others; it never runs an action twice.
	UncertainCompensate = fsm.UncertainCompensate
	// UncertainRetry runs the action again with the same idempotency key.
	UncertainRetry = fsm.UncertainRetry
)

// Durability is a saga's durability mode: when a step's side effect may
// begin relative to the log record that says it runs (Definition.Durability,
// StartOptions.Durability).
type Durability = fsm.Durability

// Durability modes.
const (
	// DurabilityStrict (the default): a step runs only after its record is
	// durable. A 4-step saga waits for 5 fsyncs.
	DurabilityStrict = fsm.DurabilityStrict
	// DurabilityPipelined: "step k done, k+1 begins" is made durable while
	// step k+1 runs, never more than one step ahead; start and finish are
	// durable before the caller is told. A 4-step saga waits for 2 fsyncs.
	// After a crash the last durable intent and the step after it are
	// both compensated as uncertain (Call.Uncertain, output possibly
	// missing: handlers work from the idempotency key). In a replicated
	// group pipelined sagas run strict.
	DurabilityPipelined = fsm.DurabilityPipelined
)

// MaxSteps bounds the steps of a definition Define accepts (256): a
// scheduling pass over a saga with parallel steps looks at every step.
// Definitions stored before the bound keep working.
const MaxSteps = fsm.MaxSteps

// ParseDurability parses "strict" or "pipelined" ("" is strict).
func ParseDurability(s string) (Durability, error) { return fsm.ParseDurability(s) }

// Handlers: what the Registry holds and what they receive.
type (
	// Registry holds the step actions and compensation handlers by name.
	Registry = compensation.Registry
	// Call is what an action or a compensation handler receives: saga id,
	// step, input, recorded output, attempt, idempotency key, Uncertain.
	Call = compensation.Call
	// Action runs a step and returns its output.
	Action = compensation.Action
	// Handler compensates a step.
	Handler = compensation.Handler
)

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry { return compensation.NewRegistry() }

// Permanent marks an error as not worth retrying: an action's step fails
// at once; a compensation's saga is STUCK at once, for an operator.
func Permanent(err error) error { return compensation.Permanent(err) }

// Logger is compensation.Logger: the logger of the call a handler's
// context was made for, naming its saga, step, kind and attempt (and,
// when tracing, its trace and span ids); slog.Default() outside a call.
func Logger(ctx context.Context) *slog.Logger { return compensation.Logger(ctx) }

// Errors a call may return, besides those declared in engine.go. Match
// them with errors.Is.
var (
	// ErrUnknownSaga: no saga has that id.
	ErrUnknownSaga = fsm.ErrUnknownSaga
	// ErrRemoved: Run was given an idempotency key whose saga finished
	// and was removed after its retention, the key being kept for the
	// dedupe window (Options.DedupeWindow): the work was done; nothing
	// started. It also matches ErrUnknownSaga.
	ErrRemoved = errors.New("engine: saga removed after its retention")
	// ErrUnknownDefinition: no definition has that name (or version).
	ErrUnknownDefinition = fsm.ErrUnknownDefinition
	// ErrIllegalTransition: the saga's state does not allow the call (an
	// Advance of a step that is not current, a retry of a saga that is not
	// STUCK); nothing changed. The error is a *TransitionError.
	ErrIllegalTransition = fsm.ErrIllegalTransition
	// ErrInvalidQuery: List or CountQuery was given a query that cannot
	// be run (a version without a definition, a malformed cursor, an
	// empty range…); nothing was read.
	ErrInvalidQuery = fsm.ErrInvalidQuery
	// ErrSagaExists: Start with an id that is already used.
	ErrSagaExists = fsm.ErrSagaExists
	// ErrDuplicateKey: a start record whose idempotency key another saga
	// holds (Start itself answers a repeated key with the first saga).
	ErrDuplicateKey = fsm.ErrDuplicateKey
	// ErrTooManySteps: Define was given more than MaxSteps steps (in a
	// *DefinitionError listing every problem).
	ErrTooManySteps = fsm.ErrTooManySteps
	// ErrUnknownHandler: a definition names an action or compensation the
	// Registry does not hold.
	ErrUnknownHandler = compensation.ErrUnknownName
)

// Error types carrying the details of the errors above.
type (
	// TransitionError says why a call was refused by the saga's state.
	TransitionError = fsm.TransitionError
	// DefinitionError lists every problem of a definition Define refused.
	DefinitionError = fsm.DefinitionError
)
