package main

import (
	"encoding/json"
	"errors"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/fsm"
)

func newExport(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: "Every saga as JSON lines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.online() {
				return fail(exitUsage, errors.New("export works on a stopped engine's directory"), "pass --dir DIR, or page with: sagactl --addr URL list -o json")
			}
			e, err := g.openOffline()
			if err != nil {
				return err
			}
			defer e.Close()
			enc := json.NewEncoder(g.out)
			after := ""
			for {
				page, next, err := e.List(cmd.Context(), fsm.Query{After: after, Limit: 1000})
				if err != nil {
					return fail(exitFailed, err, "")
				}
				for _, st := range page {
					if err := enc.Encode(admin.NewSagaJSON(st)); err != nil {
						return err
					}
				}
				if next == "" {
					return nil
				}
				after = next
			}
		},
	}
}
