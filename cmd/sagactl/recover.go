package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newRecover(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "recover",
		Short: "Replay the log into the state; list the sagas that resume when the host restarts",
		Long: `recover replays every log entry after the state's applied index into the
state (what the engine does when it opens) and lists each saga that is not
terminal with what the engine will do with it: compensations pending,
uncertain steps retried or compensated, callers awaited, operators awaited.
No handler runs: that happens when the host process restarts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.online() {
				return fail(exitUsage, errors.New("recover works on a stopped engine's directory"), "pass --dir DIR")
			}
			e, err := g.openOffline()
			if err != nil {
				return err
			}
			defer e.Close()
			res, err := e.Resumptions(cmd.Context())
			if err != nil {
				return fail(exitFailed, err, "")
			}
			rs := e.Stats().Recovery
			type row struct {
				ID     string `json:"id"`
				State  string `json:"state"`
				Action string `json:"on_restart"`
			}
			rows := []row{}
			for _, r := range res {
				rows = append(rows, row{r.Status.ID, r.Status.State.String(), r.Action})
			}
			if g.json() {
				return g.printJSON(map[string]any{"replayed": rs.Replayed, "applied_index": rs.LastIndex, "sagas": rows})
			}
			fmt.Fprintf(g.out, "replayed %d log entries; the state is at log index %d\n", rs.Replayed, rs.LastIndex)
			if len(rows) == 0 {
				fmt.Fprintln(g.out, "no saga to resume: every saga is COMPLETED or FAILED")
				return nil
			}
			w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "\nID\tSTATE\tON RESTART")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\n", r.ID, r.State, r.Action)
			}
			return w.Flush()
		},
	}
}
