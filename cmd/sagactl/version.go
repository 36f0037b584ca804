package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersion(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of sagactl and of the formats it reads",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			goVersion := "unknown go"
			if bi, ok := debug.ReadBuildInfo(); ok {
				goVersion = bi.GoVersion
			}
			if g.json() {
				return g.printJSON(map[string]any{"version": version, "go": goVersion,
					"wal_frame_format": wal.FormatVersion, "record_format": fsm.RecordVersion})
			}
			fmt.Fprintf(g.out, "sagactl %s (%s, wal frame format %d, record format %d)\n",
				version, goVersion, wal.FormatVersion, fsm.RecordVersion)
			return nil
		},
	}
}
