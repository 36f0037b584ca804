package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/policy"
)

func newPolicy(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Read, change and explain the saga policy of a running engine",
	}
	need := func() (*client, error) {
		if !g.online() {
			return nil, fail(exitUsage, errors.New("policy commands talk to a running engine"), "pass --addr URL")
		}
		return g.client()
	}
	// change sends method to /v1/policy and prints the policy in force
	// after it: its JSON, or done's line with its version.
	change := func(cmd *cobra.Command, method string, body []byte, done string) error {
		c, err := need()
		if err != nil {
			return err
		}
		var d policy.Description
		if err := c.do(cmd.Context(), method, "/v1/policy", body, &d); err != nil {
			return err
		}
		if g.json() {
			return g.printJSON(d)
		}
		fmt.Fprintf(g.out, done+"\n", d.Version)
		return nil
	}
	get := &cobra.Command{
		Use:   "get",
		Short: "Print the policy in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := need()
			if err != nil {
				return err
			}
			var d policy.Description
			if err := c.do(cmd.Context(), "GET", "/v1/policy", nil, &d); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(d)
			}
			printPolicy(g, d)
			return nil
		},
	}
	var file string
	set := &cobra.Command{
		Use:   "set -f FILE",
		Short: "Replace the API layer of the policy with a YAML file (validated; rejected whole)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return fail(exitUsage, errors.New("set needs -f FILE"), "")
			}
			body, err := os.ReadFile(file)
			if err != nil {
				return fail(exitUsage, err, "")
			}
			return change(cmd, "PUT", body, "policy version %d in force")
		},
	}
	set.Flags().StringVarP(&file, "file", "f", "", "policy file (YAML)")
	clearCmd := &cobra.Command{
		Use:   "clear",
		Short: "Remove the API layer of the policy: the policy file and the environment alone are in force again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return change(cmd, "DELETE", nil, "policy version %d in force (no API layer)")
		},
	}
	var user, tenant string
	explain := &cobra.Command{
		Use:   "explain OPERATION",
		Short: "Whether an operation runs as a saga, and which source decided",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := need()
			if err != nil {
				return err
			}
			var d policy.Decision
			if err := c.do(cmd.Context(), "GET", "/v1/policy/explain"+query("operation", args[0], "user", user, "tenant", tenant), nil, &d); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(d)
			}
			fmt.Fprintln(g.out, d.String())
			return nil
		},
	}
	explain.Flags().StringVar(&user, "user", "", "user id (for per-user overrides)")
	explain.Flags().StringVar(&tenant, "tenant", "", "tenant id (for per-tenant overrides)")
	cmd.AddCommand(get, set, clearCmd, explain)
	return cmd
}

func printPolicy(g *globals, d policy.Description) {
	fmt.Fprintf(g.out, "policy version %d\n", d.Version)
	fmt.Fprintf(g.out, "enable_saga: %v (from %s)\n", d.EnableSaga, d.EnableSagaFrom)
	fmt.Fprintf(g.out, "saga_operations: [%s] (from %s)\n", strings.Join(d.SagaOperations, ", "), d.SagaOperationsFrom)
	fmt.Fprintf(g.out, "on_engine_unavailable: %s\n", d.OnEngineUnavailable)
	names := make([]string, 0, len(d.Operations))
	for n := range d.Operations {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var ms []string
		for _, m := range d.Operations[n].Milestones {
			desc := m.Name + "→" + dash(m.Compensation)
			if len(m.After) > 0 {
				desc += " (after " + strings.Join(m.After, ", ") + ")"
			}
			ms = append(ms, desc)
		}
		fmt.Fprintf(g.out, "  %s: %s\n", n, strings.Join(ms, ", "))
	}
}
