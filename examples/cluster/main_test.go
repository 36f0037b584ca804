package main

import (
	"slices"
	"testing"

	"github.com/sagaengine/saga/replication"
)

func TestBadFlagsExitWithUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"-no-such-flag"},
		{"-dir", "d"},                   // no -id
		{"-id", "n1", "-dir", "d", "x"}, // stray argument
		{"-id", "n1", "-dir", "d", "-peers", "n1=127.0.0.1:7001"}, // -peers without -bootstrap
		{"-id", "n1", "-dir", "d", "-bootstrap", "-peers", "n1"},  // not id=addr
		{"-id", "n1", "-dir", "d", "-tls-cert", "c.pem"},          // TLS half configured
		{"-id", "n1", "-dir", "d", "-workload", "-1"},             // negative
		{"-id", "n1", "-dir", "d", "-heartbeat", "0s"},            // zero timer
	} {
		if code := run(args); code != 2 {
			t.Errorf("cluster %q: exit %d, want 2", args, code)
		}
	}
}

func TestFlags(t *testing.T) {
	o, err := parseFlags([]string{"-id", "n1", "-dir", "d", "-bootstrap", "-peers", "n1=127.0.0.1:7001,n2=127.0.0.1:7002",
		"-tls-cert", "c", "-tls-key", "k", "-tls-ca", "ca", "-workload", "4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []replication.Server{{ID: "n1", Address: "127.0.0.1:7001"}, {ID: "n2", Address: "127.0.0.1:7002"}}
	if !slices.Equal(o.peers, want) || o.tls == nil || o.tls.CAFile != "ca" || o.workload != 4 || o.raftAddr != "127.0.0.1:7001" {
		t.Fatalf("parsed %+v", o)
	}
}
