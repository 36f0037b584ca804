package main

import (
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
)

func newList(g *globals) *cobra.Command {
	var state, definition, since, after string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List sagas (by state, by definition, since a time)",
		Example: `  sagactl --dir DIR list --state STUCK
  sagactl --addr URL list --definition checkout --since 1h -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			params := map[string]string{"state": state, "definition": definition, "since": since, "after": after}
			if limit > 0 {
				params["limit"] = strconv.Itoa(limit)
			}
			q, _, err := admin.ParseQuery(func(k string) string { return params[k] })
			if err != nil {
				return fail(exitUsage, err, "")
			}
			var rep admin.ListReply
			if g.online() {
				c, err := g.client()
				if err != nil {
					return err
				}
				if err := c.do(cmd.Context(), "GET", "/v1/sagas"+query("state", state, "definition", definition,
					"since", since, "after", after, "limit", params["limit"]), nil, &rep); err != nil {
					return err
				}
			} else {
				e, err := g.openOffline()
				if err != nil {
					return err
				}
				defer e.Close()
				sagas, next, err := e.List(cmd.Context(), q)
				if err != nil {
					return fail(exitFailed, err, "")
				}
				rep.Sagas, rep.Next = []admin.SagaJSON{}, next
				for _, st := range sagas {
					rep.Sagas = append(rep.Sagas, admin.NewSagaJSON(st))
				}
			}
			if g.json() {
				return g.printJSON(rep)
			}
			w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tDEFINITION\tSTATE\tSTEP\tCREATED\tLAST ERROR")
			for _, s := range rep.Sagas {
				fmt.Fprintf(w, "%s\t%s@v%d\t%s\t%s\t%s\t%s\n", s.ID, s.Definition, s.Version, s.State,
					dash(s.CurrentStep), s.CreatedAt.Format("2006-01-02 15:04:05"), dash(s.LastError))
			}
			if rep.Next != "" {
				fmt.Fprintf(w, "\nmore: --after %s\n", rep.Next)
			}
			return w.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "IN_PROGRESS, COMPENSATING, COMPLETED, FAILED or STUCK")
	f.StringVar(&definition, "definition", "", "definition name")
	f.StringVar(&since, "since", "", "created since: RFC 3339 time or a duration such as 1h")
	f.StringVar(&after, "after", "", "pagination cursor: the last id of the previous page")
	f.IntVar(&limit, "limit", 100, "page size (1-10000)")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
