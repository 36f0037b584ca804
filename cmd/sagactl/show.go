package main

import (
	"fmt"
	"net/url"
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
			s := rep.Saga
			fmt.Fprintf(g.out, "saga %s  %s@v%d  %s\n", s.ID, s.Definition, s.Version, s.State)
			if s.Durability != "" && s.Durability != engine.DurabilityStrict.String() {
				fmt.Fprintf(g.out, "durability %s\n", s.Durability)
			}
			if s.User != "" {
				fmt.Fprintf(g.out, "user %s\n", s.User)
			}
			if s.LastError != "" {
				fmt.Fprintf(g.out, "last error: %s\n", s.LastError)
			}
			if len(s.Pending) > 0 {
				fmt.Fprintf(g.out, "pending compensations: %v\n", s.Pending)
			}
			w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "\nSTEP\tSTATUS\tATTEMPTS\tCOMPENSATION\tCOMP. ATTEMPTS\tDURATION\tERROR")
			for _, st := range s.Steps {
				errText := st.Error
				if st.CompensationError != "" && st.Status != "compensated" {
					errText = "compensation: " + st.CompensationError // still failing
				}
				status := st.Status
				switch {
				case st.Status == "compensated" && st.Compensation == "":
					status = "done, nothing to undo" // no compensation: skipped
					if st.Uncertain {
						status = "uncertain, nothing to undo"
					}
				case st.Uncertain:
					status += " (uncertain)"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", st.Name, status, st.Attempts, dash(st.Compensation),
					st.CompensationAttempts, dash(st.Duration), dash(errText))
			}
			fmt.Fprintln(w, "\nSEQ\tLOG INDEX\tAT\tTRANSITION\tSTEP\tATTEMPT\tDETAIL")
			for _, h := range rep.History {
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
		},
	}
}
