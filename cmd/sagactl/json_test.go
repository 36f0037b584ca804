package main

import (
	"encoding"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/policy"
	"github.com/sagaengine/saga/wal"
)

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// jsonNames reports every field of t, and of the types it holds, whose
// JSON name is not snake_case (a missing tag gives the Go field name).
func jsonNames(t reflect.Type, path string, seen map[reflect.Type]bool, bad *[]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return
	}
	seen[t] = true
	if t.Implements(reflect.TypeFor[json.Marshaler]()) || reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextMarshaler]()) {
		return // encodes itself (time.Time, …)
	}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-":
			continue
		case name == "" && f.Anonymous:
		case name == "":
			*bad = append(*bad, path+"."+f.Name+": no json tag")
		case !snakeCase.MatchString(name):
			*bad = append(*bad, path+"."+f.Name+": "+name)
		}
		jsonNames(f.Type, path+"."+f.Name, seen, bad)
	}
}

// Every -o json output names its fields in snake_case, as the admin API
// does: no Go field names.
func TestJSONOutputNamesEveryFieldInSnakeCase(t *testing.T) {
	var bad []string
	seen := map[reflect.Type]bool{}
	for _, v := range []any{
		admin.SagaJSON{}, admin.StatusReply{}, admin.ListReply{}, admin.ShowReply{}, admin.ClusterReply{},
		policy.Description{}, policy.Decision{}, wal.Report{}, planJSON{},
	} {
		jsonNames(reflect.TypeOf(v), reflect.TypeOf(v).String(), seen, &bad)
	}
	if len(bad) > 0 {
		t.Fatalf("JSON names that are not snake_case:\n%s", strings.Join(bad, "\n"))
	}
}
