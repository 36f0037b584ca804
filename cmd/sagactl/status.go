package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/fsm"
)

func newStatus(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Counts of sagas by state, log size, applied index",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := fetch(g, cmd.Context(), "/v1/status", admin.BuildStatus, "")
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(rep)
			}
			return printStatus(g, rep)
		},
	}
}

func printStatus(g *globals, rep *admin.StatusReply) error {
	w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	for _, st := range fsm.States() {
		fmt.Fprintf(w, "%s\t%d\n", st, rep.Counts[st.String()])
	}
	fmt.Fprintf(w, "log\t%d segment(s), %d bytes, indexes %d..%d (%s)\n", rep.Segments, rep.LogBytes, rep.FirstIndex, rep.LastIndex, rep.LogDir)
	fmt.Fprintf(w, "applied index\t%d\n", rep.AppliedIndex)
	fmt.Fprintf(w, "last checkpoint\tlog truncated before index %d\n", rep.FirstIndex)
	if n := rep.Counts["STUCK"]; n > 0 {
		fmt.Fprintf(w, "\n%d saga(s) STUCK: list them with `sagactl list --state STUCK`\n", n)
	}
	return w.Flush()
}
