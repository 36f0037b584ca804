package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
)

func newCluster(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Members, leader and membership changes of a replicated group",
		Long: `Members, leader and membership changes of a replicated group (online only).

status shows the member --addr points at: its raft state, the leader, every
member, and its command index and state hash (equal hashes at equal command
indexes mean equal states). join and remove change the membership; only the
leader's admin API accepts them (a follower answers with the leader's id).

join adds the member as a non-voter and makes it a voter only once it has
answered the leader (over mutual TLS, with a certificate from the group's
CA) and holds the log up to its joining. A member that does not within 20
seconds is removed again, and join exits non-zero saying why: it never
counts for the quorum.`,
	}
	need := func() (*client, error) {
		if !g.online() {
			return nil, fail(exitUsage, errors.New("cluster commands talk to a running member"), "pass --addr URL of its admin API")
		}
		return g.client()
	}
	show := func(rep *admin.ClusterReply) error {
		if g.json() {
			return g.printJSON(rep)
		}
		if rep.Mode != "replicated" {
			fmt.Fprintf(g.out, "single-node engine (not replicated); applied index %d; state hash %.16s\n", rep.AppliedIndex, rep.StateHash)
			return nil
		}
		fmt.Fprintf(g.out, "member %s: %s, term %d; leader %s at %s\n", rep.ID, rep.State, rep.Term, orNone(rep.LeaderID), orNone(rep.LeaderAddr))
		fmt.Fprintf(g.out, "command index %d (commit %d, last log %d); state hash %.16s\n\n", rep.CommandIndex, rep.CommitIndex, rep.LastLogIndex, rep.StateHash)
		tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tADDRESS\tVOTER\tLEADER")
		for _, s := range rep.Servers {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%v\n", s.ID, s.Address, s.Voter, s.Leader)
		}
		return tw.Flush()
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "The member's raft state, the leader and every member",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := need()
			if err != nil {
				return err
			}
			var rep admin.ClusterReply
			if err := c.do(cmd.Context(), "GET", "/v1/cluster", nil, &rep); err != nil {
				return err
			}
			return show(&rep)
		},
	}
	change := func(action string, req admin.MemberRequest) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := need()
			if err != nil {
				return err
			}
			body, _ := json.Marshal(req)
			var rep admin.ClusterReply
			if err := c.do(cmd.Context(), "POST", "/v1/cluster/"+action, body, &rep); err != nil {
				return err
			}
			return show(&rep)
		}
	}
	join := &cobra.Command{
		Use:   "join ID RAFT-ADDRESS",
		Short: "Add a member (started without -bootstrap); a voter once it has caught up",
		Args:  exactArgs(2, "join needs the new member's id and raft address"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return change("join", admin.MemberRequest{ID: args[0], Address: args[1]})(cmd, args)
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a member from the group; send it to the leader",
		Args:  exactArgs(1, "remove needs the member's id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return change("remove", admin.MemberRequest{ID: args[0]})(cmd, args)
		},
	}
	cmd.AddCommand(status, join, remove)
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "(none known)"
	}
	return s
}

// exactArgs is cobra.ExactArgs with a usage error that says what is missing.
func exactArgs(n int, msg string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fail(exitUsage, fmt.Errorf("%s (got %d arguments)", msg, len(args)), "see: sagactl "+cmd.CommandPath()+" --help")
		}
		return nil
	}
}
