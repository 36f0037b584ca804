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
			var rep *admin.StatusReply
			if g.online() {
				c, err := g.client()
				if err != nil {
					return err
				}
				rep = &admin.StatusReply{}
				if err := c.do(cmd.Context(), "GET", "/v1/status", nil, rep); err != nil {
					return err
				}
			} else {
				e, err := g.openOffline()
				if err != nil {
					return err
				}
				defer e.Close()
				if rep, err = admin.BuildStatus(e); err != nil {
					return fail(exitFailed, err, "")
				}
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
