package fsm

// The history cap. A saga's history, the h/<id>/<seq> keys (see store.go),
// holds one key per applied transition; a saga whose compensation retries
// for days with backoff, or whose step is retried many times, would grow
// it without bound. A saga started with a cap (StartInfo.HistoryCap, set
// by the engine; 0, what every start before the cap carried, is none)
// keeps it bounded: past the cap, the oldest attempt records of the retry
// loop that is growing are dropped from the history and counted in the
// saga (Saga.HistoryDropped). Recovery reads the saga's value and the log,
// never the history, so nothing it needs is ever dropped; what is dropped
// is the history's account of failed attempts.
//
// The rule, applied by Apply to every transition of a saga with a cap:
//
//   - An attempt record is a step_started (an attempt after the first), a
//     compensation_started, or a compensation_failed that is not Final.
//     Every other record is kept forever: the start, the step completions
//     and failures, the compensation completions, a Final compensation
//     failure (STUCK), aborts, operator actions (retried, resolved) and
//     reverts.
//   - A run is a maximal sequence of consecutive attempt records of the
//     saga (of any of its steps), ended by any other record.
//   - When the record just applied is an attempt record and the saga then
//     keeps more than HistoryCap records, the oldest record of the current
//     run is dropped, unless it is one of the run's last HistoryKeepLast
//     (the latest attempt and the one before it: when the run ends, the
//     records just before its end are always there).
//
// So a transition drops at most one record, a long run keeps its latest
// attempts (as many as the cap leaves room for, and at least
// HistoryKeepLast), and a saga's history stays within HistoryCap plus
// the records never dropped that came past the cap plus HistoryKeepLast
// per run that began past it: it grows with the saga's structure and its
// operators' actions, not with time. Records of earlier runs are not
// dropped: a history under its cap is never touched, and once over it
// only the run that keeps it growing is trimmed. The dropped records of
// one run are consecutive seqs, so the history shows each run's gap as a
// jump in Seq; the summary's first and last seqs bound all the gaps.
//
// The rule depends only on the saga and the record (Saga.HistoryRun says
// where the current run's oldest kept record is), so the same log drops
// the same keys on every replica and on every replay, however it is
// batched. Applying a transition under the cap reads nothing more; one
// over it also deletes one key.

// HistoryKeepLast is the number of a run's latest attempt records that the
// history cap never drops.
const HistoryKeepLast = 2

// attemptRecord reports whether r is an attempt record, one the history
// cap may drop.
func attemptRecord(r *Record) bool {
	switch r.Kind {
	case KindStepStarted, KindCompStarted:
		return true
	case KindCompFailed:
		return !r.Final
	}
	return false
}

// noteHistory updates n's history bookkeeping for r, just applied (n.Seq
// is r's seq), and drops the oldest record of the current run if the cap
// says so: then n.HistoryDropped grew by one and n.HistoryDroppedLast is
// the seq of the record to delete.
func (n *Saga) noteHistory(r *Record) {
	if n.HistoryCap <= 0 {
		return
	}
	if !attemptRecord(r) {
		n.HistoryRun = 0
		return
	}
	if n.HistoryRun == 0 {
		n.HistoryRun = n.Seq
	}
	if n.Seq-n.HistoryDropped <= uint64(n.HistoryCap) || n.Seq-n.HistoryRun+1 <= HistoryKeepLast {
		return
	}
	drop := n.HistoryRun
	n.HistoryRun++
	n.HistoryDropped++
	if n.HistoryDroppedFirst == 0 {
		n.HistoryDroppedFirst = drop
	}
	n.HistoryDroppedLast = drop
}
