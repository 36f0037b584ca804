// Command sagactl inspects and operates saga engine data directories.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `sagactl inspects and operates saga engine data directories.

Usage:
  sagactl version     print the version of sagactl and of the log format
  sagactl help        print this help

More commands (status, list, show, wal verify|repair|dump, recover, retry,
abort, resolve, policy) arrive with the admin API.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "version":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "sagactl version: unexpected argument %q\n", args[1])
			return 2
		}
		fmt.Fprintf(stdout, "sagactl %s (%s, wal frame format 1, record format 1)\n", version, goVersion())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sagactl: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown go"
}
