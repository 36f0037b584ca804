package main

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// The single token has the admin scope and may cross a network: one
// shorter than auth.MinSecretBytes (16), from -token-file or SAGAD_TOKEN,
// refuses the start, as the admin API, the console and a tokens file's
// secret_file refuse theirs, and before the data directory is made.
func TestSagadRefusesAShortSingleToken(t *testing.T) {
	t.Chdir(t.TempDir())
	write(t, "short", "secret\n")
	if err := refused(t, "-listen", "127.0.0.1:0", "-token-file", "short"); !errors.Is(err, errConfig) {
		t.Errorf("a short -token-file: %v, want a bad configuration", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := func(k string) string {
		if k == TokenEnv {
			return "abc"
		}
		return ""
	}
	if err := run(ctx, []string{"-listen", "127.0.0.1:0"}, env, io.Discard, io.Discard, func(string) { cancel() }); !errors.Is(err, errConfig) {
		t.Errorf("a short %s: %v, want a bad configuration", TokenEnv, err)
	}
	if _, err := os.Stat("sagad-data"); !os.IsNotExist(err) {
		t.Errorf("a refused start made the data directory: %v", err)
	}
}
