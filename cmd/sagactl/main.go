// Command sagactl inspects and operates saga engines: offline on a data
// directory whose engine is not running (--dir), or online through a
// running engine's admin API (--addr).
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
