// Package replication will replicate the saga log with Raft (issue: replication/).
package replication
