package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A handler's hmac_secret_file is relative to the config file's
// directory, not to the working directory; a missing one refuses the
// start before the data directory exists.
func TestSagadHandlersPathsAreTheConfigFilesAndARefusalWritesNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	write(t, "etc/inventory.secret", "a-secret-shared-with-the-handlers\n")
	write(t, "etc/sagad.yaml", "data: data\nhandlers:\n"+
		"  reserve: {url: \"http://127.0.0.1:9/reserve\", hmac_secret_file: inventory.secret}\n")
	start(t, map[string]string{TokenEnv: testToken}, "-config", "etc/sagad.yaml")
	if _, err := os.Stat(filepath.Join("etc", "data")); err != nil {
		t.Fatalf("sagad did not start with a secret relative to its config file: %v", err)
	}

	write(t, "etc2/sagad.yaml", "data: data\nhandlers:\n"+
		"  reserve: {url: \"http://127.0.0.1:9/reserve\", hmac_secret_file: inventory.secret}\n")
	err := refused(t, "-config", "etc2/sagad.yaml")
	if !strings.Contains(err.Error(), filepath.Join("etc2", "inventory.secret")) {
		t.Errorf("the refusal does not name the secret file as resolved: %v", err)
	}
	if _, err := os.Stat(filepath.Join("etc2", "data")); !os.IsNotExist(err) {
		t.Fatalf("a refused start made its data directory: %v", err)
	}
}
