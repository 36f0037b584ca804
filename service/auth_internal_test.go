package service

import (
	"testing"

	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
)

// TestEveryProcedureHasAScope: a procedure added to the proto without an
// entry in procedureScopes would need admin scope (closed, not open);
// this says so before a caller finds out.
func TestEveryProcedureHasAScope(t *testing.T) {
	sd := sagav1.File_saga_v1_saga_proto.Services().ByName("SagaService")
	for i := 0; i < sd.Methods().Len(); i++ {
		p := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(i).Name())
		if _, ok := procedureScopes[p]; !ok {
			t.Errorf("%s has no entry in procedureScopes", p)
		}
	}
	if got := ProcedureScope("/saga.v1.SagaService/Unheard"); got.String() != "admin" {
		t.Errorf("an unknown procedure needs %v, want admin", got)
	}
}
