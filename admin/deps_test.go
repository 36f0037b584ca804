package admin

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAdminLinksNoRaft pins that a single-node binary embedding the admin
// API links no consensus library: the cluster endpoints reach raft only
// through the Cluster interface (admin/raftcluster implements it).
func TestAdminLinksNoRaft(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the imports with")
	}
	out, err := exec.Command(gobin, "list", "-deps", "github.com/sagaengine/saga/admin").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/hashicorp/raft", "github.com/sagaengine/saga/replication"} {
			if pkg == banned || strings.HasPrefix(pkg, banned+"/") {
				t.Errorf("admin imports %s: the admin API would link raft into single-node binaries; put what needs it behind Cluster", pkg)
			}
		}
	}
}
