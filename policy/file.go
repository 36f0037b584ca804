package policy

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The policy file format (YAML). Every key is optional.
//
//	enable_saga: true
//	saga_operations: [data_ingest_pipeline, data_mapping]
//	on_engine_unavailable: run_without_saga   # or: fail
//	compensation_handlers:                    # the seed plan's form:
//	  data_ingest_pipeline:                   # milestones in file order
//	    ingest: delete_uploaded_file
//	    parse: mark_file_as_unparsed
//	operations:                               # the long form, with settings
//	  data_mapping:
//	    milestones:
//	      - {name: analyze_source, compensation: revert_source_analysis}
//	    retry: {max_attempts: 5, initial_backoff: 100ms, max_backoff: 5s, max_elapsed: 2m}
//	    on_engine_unavailable: fail
//	users:
//	  user_123: {enable_saga: false}
//	tenants:
//	  acme: {saga_operations: [data_mapping]}

// ParseFile reads and validates a policy file.
func ParseFile(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses a policy document; name labels error messages. Structural
// errors carry line numbers. The result is not yet validated against a
// registry (see Policy.Validate).
func Parse(name string, data []byte) (*Policy, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &ValidationError{Source: name, Problems: []string{name + ": " + err.Error()}}
	}
	p := &Policy{lines: map[string]int{}, file: name}
	var probs []string
	bad := func(n *yaml.Node, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("%s:%d: %s", name, n.Line, fmt.Sprintf(format, a...)))
	}
	if len(root.Content) == 0 {
		return p, nil // an empty file sets nothing
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		bad(doc, "a policy is a mapping of keys (enable_saga, saga_operations, …)")
		return nil, &ValidationError{Source: name, Problems: probs}
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		p.lines[k.Value] = k.Line
		switch k.Value {
		case "enable_saga":
			var b bool
			if err := v.Decode(&b); err != nil {
				bad(v, "enable_saga: want true or false, got %q", v.Value)
				continue
			}
			p.EnableSaga = &b
		case "saga_operations":
			var ops []string
			if err := v.Decode(&ops); err != nil {
				bad(v, "saga_operations: want a list of operation names")
				continue
			}
			p.SagaOperations = append([]string{}, ops...)
		case "on_engine_unavailable":
			p.OnEngineUnavailable = Fallback(v.Value)
		case "compensation_handlers":
			if v.Kind != yaml.MappingNode {
				bad(v, "compensation_handlers: want operation → milestone → handler")
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				opName, ms := v.Content[j], v.Content[j+1]
				op := p.operation(opName.Value, opName.Line)
				if ms.Kind != yaml.MappingNode {
					bad(ms, "compensation_handlers.%s: want milestone: handler pairs, in order", opName.Value)
					continue
				}
				for m := 0; m+1 < len(ms.Content); m += 2 {
					mk, mv := ms.Content[m], ms.Content[m+1]
					p.lines[opName.Value+"/"+mk.Value] = mk.Line
					op.Milestones = append(op.Milestones, Milestone{Name: mk.Value, Compensation: mv.Value})
				}
			}
		case "operations":
			if v.Kind != yaml.MappingNode {
				bad(v, "operations: want a mapping of operation names")
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				opName, body := v.Content[j], v.Content[j+1]
				op := p.operation(opName.Value, opName.Line)
				probs = append(probs, parseOperation(name, p, opName.Value, op, body)...)
			}
		case "users", "tenants":
			var m map[string]struct {
				EnableSaga     *bool    `yaml:"enable_saga"`
				SagaOperations []string `yaml:"saga_operations"`
			}
			if err := v.Decode(&m); err != nil {
				bad(v, "%s: want name → {enable_saga, saga_operations}: %v", k.Value, err)
				continue
			}
			out := map[string]Override{}
			for who, o := range m {
				out[who] = Override{EnableSaga: o.EnableSaga, SagaOperations: o.SagaOperations}
			}
			if k.Value == "users" {
				p.Users = out
			} else {
				p.Tenants = out
			}
		default:
			bad(k, "unknown key %q", k.Value)
		}
	}
	if len(probs) > 0 {
		return nil, &ValidationError{Source: name, Problems: probs}
	}
	return p, nil
}

func (p *Policy) operation(name string, line int) *Operation {
	if p.Operations == nil {
		p.Operations = map[string]*Operation{}
	}
	if op, ok := p.Operations[name]; ok {
		return op
	}
	op := &Operation{}
	p.Operations[name] = op
	p.lines[name] = line
	return op
}

func parseOperation(file string, p *Policy, opName string, op *Operation, body *yaml.Node) []string {
	var probs []string
	bad := func(n *yaml.Node, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("%s:%d: operation %q: %s", file, n.Line, opName, fmt.Sprintf(format, a...)))
	}
	if body.Kind != yaml.MappingNode {
		bad(body, "want a mapping (milestones, retry, on_engine_unavailable)")
		return probs
	}
	for i := 0; i+1 < len(body.Content); i += 2 {
		k, v := body.Content[i], body.Content[i+1]
		switch k.Value {
		case "milestones":
			if v.Kind != yaml.SequenceNode {
				bad(v, "milestones: want a list")
				continue
			}
			op.Milestones = nil
			for _, m := range v.Content {
				var ms Milestone
				var raw struct {
					Name         string `yaml:"name"`
					Compensation string `yaml:"compensation"`
				}
				if m.Kind == yaml.ScalarNode {
					ms.Name = m.Value
				} else if err := m.Decode(&raw); err != nil {
					bad(m, "milestone: want {name, compensation}")
					continue
				} else {
					ms = Milestone{Name: raw.Name, Compensation: raw.Compensation}
				}
				p.lines[opName+"/"+ms.Name] = m.Line
				op.Milestones = append(op.Milestones, ms)
			}
		case "retry":
			var raw map[string]string
			if err := v.Decode(&raw); err != nil {
				bad(v, "retry: want {max_attempts, initial_backoff, max_backoff, max_elapsed}")
				continue
			}
			r := &Retry{}
			for rk, rv := range raw {
				var err error
				switch rk {
				case "max_attempts":
					r.MaxAttempts, err = strconv.Atoi(rv)
				case "initial_backoff":
					r.InitialBackoff, err = time.ParseDuration(rv)
				case "max_backoff":
					r.MaxBackoff, err = time.ParseDuration(rv)
				case "max_elapsed":
					r.MaxElapsed, err = time.ParseDuration(rv)
				default:
					err = fmt.Errorf("unknown setting")
				}
				if err != nil {
					bad(v, "retry.%s=%q: %v", rk, rv, err)
				}
			}
			op.Retry = r
		case "on_engine_unavailable":
			op.OnEngineUnavailable = Fallback(v.Value)
		default:
			bad(k, "unknown key %q", k.Value)
		}
	}
	return probs
}

// Environment variables read by FromEnv.
const (
	EnvEnabled    = "SAGA_ENABLED"     // "true" or "false"
	EnvOperations = "SAGA_OPERATIONS"  // comma-separated operation names
	EnvFile       = "SAGA_POLICY_FILE" // path of the policy file
)

// FromEnv builds the environment layer from a lookup function (os.LookupEnv
// in production). Unset variables set nothing.
func FromEnv(lookup func(string) (string, bool)) (*Policy, error) {
	p := &Policy{}
	var probs []string
	if v, ok := lookup(EnvEnabled); ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			probs = append(probs, fmt.Sprintf("%s=%q: want true or false", EnvEnabled, v))
		} else {
			p.EnableSaga = &b
		}
	}
	if v, ok := lookup(EnvOperations); ok {
		p.SagaOperations = []string{}
		for _, op := range strings.Split(v, ",") {
			if op = strings.TrimSpace(op); op != "" {
				p.SagaOperations = append(p.SagaOperations, op)
			}
		}
	}
	if len(probs) > 0 {
		return nil, &ValidationError{Source: SourceEnv, Problems: probs}
	}
	return p, nil
}
