package main

import (
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/engine"
)

func newList(g *globals) *cobra.Command {
	var state, definition, user, tenant, since, until, updatedSince, updatedUntil, order, cursor string
	var metas []string
	var version, limit int
	var count bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List or count sagas: filters on state, definition, user, tenant, meta, created and updated times combine",
		Example: `  sagactl --dir DIR list --state STUCK
  sagactl --addr URL list --definition checkout --since 1h -o json
  sagactl --addr URL list --user alice --state STUCK --updated-since 2026-12-03T10:00:00Z --order newest
  sagactl --addr URL list --tenant acme --meta region=eu --meta tier=gold --count`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			params := map[string]string{"state": state, "definition": definition, "user": user, "tenant": tenant,
				"since": since, "until": until, "updated_since": updatedSince,
				"updated_until": updatedUntil, "order": order, "cursor": cursor}
			if version != 0 {
				params["version"] = strconv.Itoa(version)
			}
			if limit != 100 || cmd.Flags().Changed("limit") {
				params["limit"] = strconv.Itoa(limit)
			}
			v := url.Values{}
			for k, p := range params {
				if p != "" {
					v.Set(k, p)
				}
			}
			for _, m := range metas {
				v.Add("meta", m)
			}
			q, err := admin.ParseQueryValues(v)
			if err != nil {
				return fail(exitUsage, err, "see sagactl list --help")
			}
			qs := ""
			if len(v) > 0 {
				qs = "?" + v.Encode()
			}
			if count {
				rep, err := fetch(g, cmd.Context(), "/v1/count"+qs, func(e *engine.Engine) (*admin.CountReply, error) {
					n, err := e.CountQuery(cmd.Context(), q)
					return &admin.CountReply{Count: n}, err
				}, "")
				if err != nil {
					return err
				}
				if g.json() {
					return g.printJSON(rep)
				}
				_, err = fmt.Fprintln(g.out, rep.Count)
				return err
			}
			rep, err := fetch(g, cmd.Context(), "/v1/sagas"+qs, func(e *engine.Engine) (*admin.ListReply, error) {
				sagas, next, err := e.List(cmd.Context(), q)
				if err != nil {
					return nil, err
				}
				rep := &admin.ListReply{Sagas: []admin.SagaJSON{}, Next: next}
				for _, st := range sagas {
					rep.Sagas = append(rep.Sagas, admin.NewSagaJSON(st))
				}
				return rep, nil
			}, "")
			if err != nil {
				return err
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
				fmt.Fprintf(w, "\nmore: --cursor %s\n", rep.Next)
			}
			return w.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "IN_PROGRESS, COMPENSATING, COMPLETED, FAILED or STUCK")
	f.StringVar(&definition, "definition", "", "definition name")
	f.IntVar(&version, "version", 0, "definition version (needs --definition)")
	f.StringVar(&user, "user", "", "the saga's user")
	f.StringVar(&tenant, "tenant", "", "the saga's tenant (its meta tenant=…, as the policy layer records it)")
	f.StringArrayVar(&metas, "meta", nil, "key=value: a meta pair the saga holds (repeat for several: each must hold)")
	f.StringVar(&since, "since", "", "created at or after: RFC 3339 time or a duration ago such as 1h")
	f.StringVar(&until, "until", "", "created before: RFC 3339 time or a duration ago")
	f.StringVar(&updatedSince, "updated-since", "", "last changed at or after: RFC 3339 time or a duration ago")
	f.StringVar(&updatedUntil, "updated-until", "", "last changed before: RFC 3339 time or a duration ago")
	f.StringVar(&order, "order", "oldest", "newest or oldest (by creation)")
	f.StringVar(&cursor, "cursor", "", "pagination cursor: the \"more: --cursor\" of the previous page")
	f.StringVar(&cursor, "after", "", "the old name of --cursor")
	_ = f.MarkHidden("after")
	f.IntVar(&limit, "limit", 100, "page size (1-10000)")
	f.BoolVar(&count, "count", false, "print the number of matching sagas instead of a page")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
