package main

import (
	"strings"
	"testing"
)

// With SAGACTL_ADDR exported (as the README shows), an explicit --dir
// runs offline, and with SAGA_DIR exported an explicit --addr runs
// online: a flag given wins over the other's value from the environment.
// Both given, or both only from the environment, stay a usage error.
func TestAnExplicitFlagWinsOverTheOthersEnvironment(t *testing.T) {
	dir := seedDir(t)
	t.Setenv("SAGACTL_ADDR", "http://127.0.0.1:1") // nothing listens there
	if c, out, se := runCLI("--dir", dir, "status"); c != 0 || !strings.Contains(out, "IN_PROGRESS") {
		t.Errorf("--dir with SAGACTL_ADDR set: exit %d\n%s%s", c, out, se)
	}
	t.Setenv("SAGA_DIR", dir)
	t.Setenv("SAGACTL_TOKEN", "0123456789abcdef-token")
	if c, out, se := runCLI("--addr", "http://127.0.0.1:1", "status"); c != exitUnavailable {
		t.Errorf("--addr with SAGA_DIR set: exit %d, want %d (online, nothing listening)\n%s%s", c, exitUnavailable, out, se)
	}
	if c, _, se := runCLI("status"); c != exitUsage || !strings.Contains(se, "exclude each other") {
		t.Errorf("SAGA_DIR and SAGACTL_ADDR both set, neither flag: exit %d %s", c, se)
	}
	if c, _, se := runCLI("--dir", dir, "--addr", "http://127.0.0.1:1", "status"); c != exitUsage || !strings.Contains(se, "exclude each other") {
		t.Errorf("--dir and --addr: exit %d %s", c, se)
	}
}
