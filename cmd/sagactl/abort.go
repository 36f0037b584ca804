package main

import "github.com/spf13/cobra"

func newAbort(g *globals) *cobra.Command { return newAction(g, "abort") }
