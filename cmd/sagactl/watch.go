package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/admin"
)

func newWatch(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch",
		Short: "Stream transitions live from a running engine (online only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !g.online() {
				return fail(exitUsage, errors.New("watch needs a running engine"), "pass --addr URL")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			c.http.Timeout = 0 // a stream
			resp, err := c.send(cmd.Context(), "GET", "/v1/watch", nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			for sc.Scan() {
				if g.json() {
					fmt.Fprintln(g.out, sc.Text())
					continue
				}
				var ev admin.Event
				if json.Unmarshal(sc.Bytes(), &ev) != nil {
					continue
				}
				line := fmt.Sprintf("%s  #%d  %s  %s  %s", ev.At, ev.Index, ev.Saga, ev.Kind, ev.State)
				if ev.Step != "" {
					line += "  step=" + ev.Step
				}
				if ev.Error != "" {
					line += "  error=" + ev.Error
				}
				if ev.Actor != "" {
					line += fmt.Sprintf("  by %s: %s", ev.Actor, ev.Reason)
				}
				fmt.Fprintln(g.out, line)
			}
			if err := sc.Err(); err != nil {
				return fail(exitUnavailable, fmt.Errorf("watch stream: %w", err), "")
			}
			return fail(exitUnavailable, errors.New("the engine ended the watch stream"), "is the engine shutting down?")
		},
	}
}
