package main

import "github.com/spf13/cobra"

func newResolve(g *globals) *cobra.Command { return newAction(g, "resolve") }
