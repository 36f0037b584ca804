package fsm

// cloneInto is Clone into dst (a new Saga when dst is nil), reusing the
// memory of dst's steps; dst == s returns s itself. See ApplyInto.
func (s *Saga) cloneInto(dst *Saga) *Saga {
	if dst == nil {
		return s.Clone()
	}
	if dst == s {
		return s
	}
	steps := append(dst.Steps[:0], s.Steps...)
	*dst = *s
	dst.Steps = steps
	return dst
}

// Reset clears a scratch saga for reuse (see ApplyInto): it keeps the
// memory of its steps and drops every reference it held.
func (s *Saga) Reset() {
	steps := s.Steps[:cap(s.Steps)]
	clear(steps)
	*s = Saga{Steps: steps[:0]}
}
