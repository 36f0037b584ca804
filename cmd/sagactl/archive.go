package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/archive"
)

func newArchive(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "archive",
		Short: "Read a saga archive (files of finished sagas; see docs/archive.md)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newArchiveShow(g))
	return cmd
}

func newArchiveShow(g *globals) *cobra.Command {
	var opts archive.ReadOptions
	cmd := &cobra.Command{
		Use:   "show FILE [ID]",
		Short: "The sagas in an archive file or directory, or one saga and its history",
		Example: `  sagactl archive show archive/0000000001-20261203T074334.000000000Z.jsonl.zst
  sagactl archive show archive/ order-17 -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if len(args) == 2 {
				rec, err := archive.Find(cmd.Context(), path, args[1], opts)
				if err != nil {
					return archiveError(path, err)
				}
				if g.json() {
					return g.printJSON(rec)
				}
				return printShow(g, rec.Show())
			}
			// Read it all once to check it, so that a damaged file prints
			// nothing but the error, then again to print it: the records
			// are not held, and an archive of months fits in the memory of
			// one file. The second reading stops at the records the first
			// checked (a file being written may have grown since).
			n := 0
			for _, err := range archive.Read(cmd.Context(), path, opts) {
				if err != nil {
					return archiveError(path, err)
				}
				n++
			}
			each := func(f func(archive.Saga) error) error {
				seen := 0
				for rec, err := range archive.Read(cmd.Context(), path, opts) {
					if err != nil {
						return archiveError(path, err)
					}
					if seen == n {
						break
					}
					seen++
					if err := f(rec.Saga); err != nil {
						return err
					}
				}
				return nil
			}
			if g.json() {
				return printSagasJSON(g.out, each)
			}
			w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tDEFINITION\tSTATE\tCREATED\tUPDATED")
			err := each(func(s archive.Saga) error {
				_, err := fmt.Fprintf(w, "%s\t%s@v%d\t%s\t%s\t%s\n", s.ID, s.Definition, s.Version, s.State,
					s.CreatedAt.Format("2006-01-02 15:04:05"), s.UpdatedAt.Format("2006-01-02 15:04:05"))
				return err
			})
			if err != nil {
				return err
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&opts.TolerateTornTail, "tolerate-torn-tail", false,
		"end a file quietly at a torn last batch (a Write a crash interrupted, never acknowledged)")
	return cmd
}

// printSagasJSON writes {"sagas": [...]} as printJSON would, one saga
// at a time.
func printSagasJSON(out io.Writer, each func(func(archive.Saga) error) error) error {
	bw := bufio.NewWriter(out)
	bw.WriteString("{\n  \"sagas\": [")
	first := true
	err := each(func(s archive.Saga) error {
		b, err := json.MarshalIndent(s, "    ", "  ")
		if err != nil {
			return err
		}
		if !first {
			bw.WriteByte(',')
		}
		first = false
		bw.WriteString("\n    ")
		_, err = bw.Write(b)
		return err
	})
	if err != nil {
		return err
	}
	if !first {
		bw.WriteString("\n  ")
	}
	bw.WriteString("]\n}\n")
	return bw.Flush()
}

// archiveError gives an archive's read error its exit code and a hint.
func archiveError(path string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail(exitUsage, err, "FILE is an archive file (*"+archive.Suffix+") or a directory of them")
	case errors.Is(err, archive.ErrTornTail):
		return fail(exitFailed, err, "the file ends inside a batch that a crash interrupted; the records before it are intact: "+
			"sagactl archive show --tolerate-torn-tail "+path)
	case errors.Is(err, archive.ErrNotFound):
		return fail(exitFailed, err, "list the sagas with: sagactl archive show "+path)
	case errors.Is(err, archive.ErrVersion):
		return fail(exitFailed, err, "written by a newer version: read it with a newer sagactl")
	}
	return fail(exitFailed, err, "")
}
