package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/user"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
)

var actionHelp = map[string]struct{ short, long string }{
	"retry": {"Retry a STUCK saga's compensation now, with a fresh retry budget",
		"retry makes a STUCK saga compensate again at once (after an outage, say), with a fresh retry budget. Recorded with who and why."},
	"abort": {"Abort an in-progress saga: compensate what it did",
		"abort stops an in-progress saga and compensates its completed steps and the running one (whose effect is uncertain). Recorded with who and why."},
	"resolve": {"Mark a STUCK saga's compensation as done by hand; compensation continues",
		"resolve records that an operator undid the STUCK step by hand; the saga goes on compensating the steps before it. Recorded with who and why."},
}

func newAction(g *globals, action string) *cobra.Command {
	var reason, actor string
	cmd := &cobra.Command{
		Use:   action + " ID",
		Short: actionHelp[action].short,
		Long:  actionHelp[action].long,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !g.online() {
				return fail(exitUsage, fmt.Errorf("%s acts through a running engine", action), "pass --addr URL")
			}
			if action != "retry" && reason == "" {
				return fail(exitUsage, fmt.Errorf("%s needs --reason", action), "")
			}
			if actor == "" {
				actor = defaultActor()
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			body, _ := json.Marshal(admin.ActionRequest{Actor: actor, Reason: reason})
			var s admin.SagaJSON
			if err := c.do(cmd.Context(), "POST", "/v1/sagas/"+url.PathEscape(args[0])+"/"+action, body, &s); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(s)
			}
			// The server records its token's name as the actor, not --actor.
			fmt.Fprintf(g.out, "%s: %s done; saga %s is now %s\n", s.ID, action, s.ID, s.State)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the saga's history)")
	cmd.Flags().StringVar(&actor, "actor", "", "ignored by the server, which records the name of the token used (sent for older servers; default: user@host)")
	return cmd
}

func defaultActor() string {
	name := "operator"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}
