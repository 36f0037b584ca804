package main

import "github.com/spf13/cobra"

func newRetry(g *globals) *cobra.Command { return newAction(g, "retry") }
