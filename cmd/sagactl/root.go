package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/wal"
)

// Exit codes that scripts can rely on.
const (
	exitOK          = 0
	exitFailed      = 1 // the operation failed (not found, illegal action, damage found)
	exitUsage       = 2 // bad flags or arguments
	exitRefused     = 3 // refused: the directory is locked, or the action needs --force
	exitUnavailable = 4 // cannot reach or authenticate to the admin API
)

// cliError carries an exit code and a hint for the next step.
type cliError struct {
	code int
	err  error
	hint string
}

func (e *cliError) Error() string { return e.err.Error() }

func fail(code int, err error, hint string) error { return &cliError{code: code, err: err, hint: hint} }

// globals are the persistent flags.
type globals struct {
	dir       string
	addr      string
	tokenFile string
	output    string
	out, err  io.Writer
	// running is set once cobra has parsed the flags and arguments and a
	// command runs: an error without an exit code is then a failure of
	// the command, not a usage error.
	running bool
}

func (g *globals) json() bool { return g.output == "json" }

func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// online reports whether the command talks to a running engine.
func (g *globals) online() bool { return g.addr != "" }

// openOffline opens the data directory for inspection: it takes the
// directory's lock (refused while an engine runs) and replays the log.
func (g *globals) openOffline() (*engine.Engine, error) {
	if g.dir == "" {
		return nil, fail(exitUsage, errors.New("no data directory"), "pass --dir DIR (offline) or --addr URL (online)")
	}
	if _, err := os.Stat(g.dir); err != nil {
		return nil, fail(exitUsage, fmt.Errorf("data directory %s: %w", g.dir, err), "")
	}
	e, err := engine.Open(g.dir, engine.Options{Inspect: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	switch {
	case errors.Is(err, engine.ErrLocked):
		return nil, fail(exitRefused, err, "an engine is running on this directory: talk to it with --addr instead")
	case errors.Is(err, engine.ErrNotDataDir):
		return nil, fail(exitUsage, err, "--dir names the directory an engine was opened on (it holds wal/ and state/); "+
			"a replicated member keeps its log in raft/: inspect it online with --addr")
	case errors.Is(err, wal.ErrTornTail):
		return nil, fail(exitFailed, err, "inspection changes nothing: cut the tail with `sagactl --dir "+g.dir+" wal repair` (or start the engine, which cuts it)")
	case errors.Is(err, wal.ErrNewerFormat):
		return nil, fail(exitFailed, err, "written by a newer version: inspect it with a newer sagactl; nothing was changed")
	case errors.Is(err, wal.ErrRepairNeeded):
		return nil, fail(exitFailed, err, "inspection changes nothing: starting the engine makes this change; "+
			"see what it would do with: sagactl --dir "+g.dir+" wal repair --dry-run")
	case err != nil:
		return nil, fail(exitFailed, err, "check the log with: sagactl --dir "+g.dir+" wal verify")
	}
	return e, nil
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "sagactl",
		Short: "Inspect and operate saga engines",
		Long: `sagactl inspects and operates saga engines.

Offline, on a data directory whose engine is not running:
  sagactl --dir DIR status | list | show ID | recover | export | wal verify|repair|dump

On an archive of finished sagas (a file or directory):
  sagactl archive show FILE [ID]

Online, through a running engine's admin API:
  sagactl --addr URL status | list | show ID | watch
  sagactl --addr URL retry ID | abort ID --reason R | resolve ID --reason R
  sagactl --addr URL policy get | set -f FILE | explain OPERATION

The token comes from --token-file or SAGACTL_TOKEN. Output is a table for
people; -o json for scripts. Exit codes: 0 ok, 1 failed, 2 usage,
3 refused (locked directory, needs --force), 4 admin API unreachable or
unauthorized.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "table" && g.output != "json" {
				return fail(exitUsage, fmt.Errorf("-o %q: want table or json", g.output), "")
			}
			// A flag given wins over the other's value from the environment
			// (SAGACTL_ADDR exported, --dir for an offline look).
			pf := cmd.Root().PersistentFlags()
			switch dirSet, addrSet := pf.Changed("dir"), pf.Changed("addr"); {
			case g.dir == "" || g.addr == "":
			case dirSet && !addrSet:
				g.addr = ""
			case addrSet && !dirSet:
				g.dir = ""
			default:
				return fail(exitUsage, errors.New("--dir and --addr exclude each other"), "use --dir offline or --addr online (or unset SAGA_DIR or SAGACTL_ADDR)")
			}
			g.running = true
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dir, "dir", os.Getenv("SAGA_DIR"), "data directory of a stopped engine (offline; env SAGA_DIR)")
	pf.StringVar(&g.addr, "addr", os.Getenv("SAGACTL_ADDR"), "admin API of a running engine: http(s)://host:port or unix:/path (env SAGACTL_ADDR)")
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the admin API token (or env SAGACTL_TOKEN)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json (snake_case fields; errors as {\"error\", \"hint\", \"exit_code\"} on stderr)")
	root.AddCommand(newVersion(g), newStatus(g), newList(g), newShow(g), newWatch(g), newRecover(g), newExport(g),
		newWal(g), newArchive(g), newRetry(g), newAbort(g), newResolve(g), newPolicy(g), newCluster(g))
	return root
}

func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{out: stdout, err: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(context.Background())
	if err == nil {
		return exitOK
	}
	ce, ok := errors.AsType[*cliError](err)
	switch {
	case !ok && g.running:
		ce = &cliError{code: exitFailed, err: err} // writing the output, say
	case !ok:
		// cobra's own errors: unknown command or flag, wrong argument count.
		ce = &cliError{code: exitUsage, err: err, hint: "see: " + strings.Join(strings.Fields("sagactl "+commandPath(root, args)+" --help"), " ")}
	}
	if g.json() || outputIn(args) == "json" {
		// With -o json the error is JSON too, on stderr: one object.
		b, _ := json.Marshal(jsonError{Error: ce.err.Error(), Hint: ce.hint, ExitCode: ce.code})
		fmt.Fprintf(stderr, "%s\n", b)
		return ce.code
	}
	fmt.Fprintf(stderr, "sagactl: %v\n", ce.err)
	if ce.hint != "" {
		fmt.Fprintf(stderr, "  → %s\n", ce.hint)
	}
	return ce.code
}

// outputIn finds -o/--output in args before cobra parses them, so that
// an error cobra finds first (an unknown command) is reported in the
// asked-for format too.
func outputIn(args []string) string {
	for i, a := range args {
		switch {
		case a == "--":
			return ""
		case (a == "-o" || a == "--output") && i+1 < len(args):
			return args[i+1]
		case strings.HasPrefix(a, "--output="):
			return strings.TrimPrefix(a, "--output=")
		case strings.HasPrefix(a, "-o"):
			return strings.TrimPrefix(strings.TrimPrefix(a, "-o"), "=")
		}
	}
	return ""
}

// jsonError is how a command run with -o json reports its failure on
// stderr.
type jsonError struct {
	Error    string `json:"error"`
	Hint     string `json:"hint,omitempty"`
	ExitCode int    `json:"exit_code"`
}

func commandPath(root *cobra.Command, args []string) string {
	if c, _, err := root.Find(args); err == nil && c != nil && c != root {
		return strings.TrimPrefix(c.CommandPath(), "sagactl ")
	}
	return ""
}
