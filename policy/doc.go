// Package policy will switch sagas on and off per operation (issue: policy/).
package policy
