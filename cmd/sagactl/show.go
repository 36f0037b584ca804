package main

import (
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/engine"
)

func newShow(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "A saga's timeline: steps, compensations, attempts, errors, durations",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := fetch(g, cmd.Context(), "/v1/sagas/"+url.PathEscape(args[0]), func(e *engine.Engine) (*admin.ShowReply, error) {
				return admin.BuildShow(cmd.Context(), e, args[0])
			}, "list sagas with: sagactl list")
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(rep)
			}
			return printShow(g, rep)
		},
	}
}

// printShow prints a saga and its history as a table: what `show` prints
// of a saga in an engine and `archive show FILE ID` of an archived one.
func printShow(g *globals, rep *admin.ShowReply) error {
	s := rep.Saga
	fmt.Fprintf(g.out, "saga %s  %s@v%d  %s\n", s.ID, s.Definition, s.Version, s.State)
	if s.Durability != "" && s.Durability != engine.DurabilityStrict.String() {
		fmt.Fprintf(g.out, "durability %s\n", s.Durability)
	}
	if s.User != "" {
		fmt.Fprintf(g.out, "user %s\n", s.User)
	}
	if s.Parent != "" {
		fmt.Fprintf(g.out, "child saga of %s (depth %d)\n", s.Parent, s.Depth)
	}
	if s.LastError != "" {
		fmt.Fprintf(g.out, "last error: %s\n", s.LastError)
	}
	if len(s.Pending) > 0 {
		fmt.Fprintf(g.out, "pending compensations: %v\n", s.Pending)
	}
	if s.Parallel {
		fmt.Fprintf(g.out, "flow: %s\n", flow(s.Steps))
	}
	w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	after := ""
	if s.Parallel {
		after = "\tAFTER"
	}
	fmt.Fprintln(w, "\nSTEP"+after+"\tSTATUS\tATTEMPTS\tCOMPENSATION\tCOMP. ATTEMPTS\tDURATION\tERROR")
	for _, st := range s.Steps {
		errText := st.Error
		if st.CompensationError != "" && st.Status != "compensated" {
			errText = "compensation: " + st.CompensationError // still failing
		}
		status := st.Status
		switch {
		case st.Status == "compensated" && st.Compensation == "" && st.Child == "":
			status = "done, nothing to undo" // no compensation: skipped
			if st.Uncertain {
				status = "uncertain, nothing to undo"
			}
		case st.Uncertain:
			status += " (uncertain)"
		}
		if st.Stuck {
			status += " (stuck)"
		}
		name := st.Name
		if s.Parallel {
			name += "\t" + dash(strings.Join(st.After, ","))
		}
		comp := st.Compensation
		if st.Child != "" {
			comp = "child " + st.Child + " (saga " + st.ChildSaga + ")" // undone as a whole
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", name, status, st.Attempts, dash(comp),
			st.CompensationAttempts, dash(st.Duration), dash(errText))
	}
	if d := s.HistoryDropped; d != nil {
		fmt.Fprintf(w, "\n%d earlier %s summarised (history cap): seq %d to %d\n", d.Count, plural(d.Count, "attempt record"), d.FirstSeq, d.LastSeq)
	}
	fmt.Fprintln(w, "\nSEQ\tLOG INDEX\tAT\tTRANSITION\tSTEP\tATTEMPT\tDETAIL")
	var prev uint64
	for _, h := range rep.History {
		if s.HistoryDropped != nil && h.Seq > prev+1 && prev > 0 {
			// The gap the history cap left: one run of retries.
			n := h.Seq - prev - 1
			fmt.Fprintf(w, "…\t\t\t%d %s summarised\t\t\t-\n", n, plural(n, "attempt record"))
		}
		prev = h.Seq
		detail := h.Error
		if h.Actor != "" {
			detail = fmt.Sprintf("by %s: %s", h.Actor, h.Reason)
		}
		if h.Final {
			detail += " (final: STUCK)"
		}
		attempt := "-"
		if h.Attempt > 0 {
			attempt = fmt.Sprint(h.Attempt)
		}
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", h.Seq, h.Index, h.At.Format("15:04:05.000"), h.Kind,
			dash(h.Step), attempt, dash(detail))
	}
	if s.State == "STUCK" {
		fmt.Fprintf(w, "\nSTUCK: retry with `sagactl retry %s`, or undo %s by hand and `sagactl resolve %s --reason ...`\n",
			s.ID, s.CurrentStep, s.ID)
	}
	return w.Flush()
}

// flow draws a DAG's steps as its layers, left to right: each step in the
// layer after its deepest dependency, parallel steps in braces, with
// their status, e.g. "plan✓ → {source✓ target✗} → join".
func flow(steps []admin.StepJSON) string {
	depth := map[string]int{}
	var layer func(name string, seen int) int
	byName := map[string]admin.StepJSON{}
	for _, st := range steps {
		byName[st.Name] = st
	}
	layer = func(name string, seen int) int {
		if d, ok := depth[name]; ok {
			return d
		}
		d := 0
		if seen <= len(steps) { // a definition is acyclic; bound it anyway
			for _, a := range byName[name].After {
				d = max(d, layer(a, seen+1)+1)
			}
		}
		depth[name] = d
		return d
	}
	var layers [][]string
	for _, st := range steps {
		d := layer(st.Name, 0)
		for len(layers) <= d {
			layers = append(layers, nil)
		}
		layers[d] = append(layers[d], st.Name+mark(st))
	}
	parts := make([]string, 0, len(layers))
	for _, l := range layers {
		if len(l) == 1 {
			parts = append(parts, l[0])
		} else {
			parts = append(parts, "{"+strings.Join(l, " ")+"}")
		}
	}
	return strings.Join(parts, " → ")
}

// mark is a step's status in one character: done ✓, running …, failed ✗,
// compensated ↺, compensating ~, pending none.
func mark(st admin.StepJSON) string {
	switch st.Status {
	case "done":
		return "✓"
	case "running":
		return "…"
	case "failed":
		return "✗"
	case "compensated":
		return "↺"
	case "compensating":
		return "~"
	}
	return ""
}

// plural is word, with an s unless n is 1.
func plural(n uint64, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
