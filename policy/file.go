package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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
//	      - {name: analyze_target, compensation: revert_target_analysis}
//	      - {name: map, compensation: drop_mapping, after: [analyze_source, analyze_target]}
//	    retry: {max_attempts: 5, initial_backoff: 100ms, max_backoff: 5s, max_elapsed: 2m}
//	    on_engine_unavailable: fail
//	    timeout: 30m                          # saga deadline (default 1h)
//	users:
//	  user_123: {enable_saga: false}
//	tenants:
//	  acme: {saga_operations: [data_mapping]}
//
// Milestones without any after are a sequence, in list order. Once one
// milestone names others in after, the operation is a DAG: a milestone
// without after may run at once, the others once their dependencies are
// done (above: both analyses in parallel, then map). compensation_handlers
// has no after: its operations are sequences.

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
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			// An empty file is refused rather than read as "sets nothing":
			// a writer that truncates before writing must not switch every
			// saga off for a moment.
			return nil, &ValidationError{Source: name, Problems: []string{name +
				": empty policy file (write `enable_saga: false` to switch sagas off)"}}
		}
		return nil, &ValidationError{Source: name, Problems: []string{name + ": " + err.Error()}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Source: name, Problems: []string{fmt.Sprintf(
			"%s:%d: a policy file holds one YAML document", name, extra.Line)}}
	}
	p := &Policy{lines: map[string]int{}, file: name}
	var probs []string
	bad := func(n *yaml.Node, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("%s:%d: %s", name, n.Line, fmt.Sprintf(format, a...)))
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		bad(doc, "a policy is a mapping of keys (enable_saga, saga_operations, …)")
		return nil, &ValidationError{Source: name, Problems: probs}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if seen[k.Value] {
			bad(k, "key %q given twice", k.Value)
			continue
		}
		seen[k.Value] = true
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
			if v.Kind != yaml.ScalarNode {
				bad(v, "on_engine_unavailable: want %s or %s", RunWithoutSaga, Fail)
				continue
			}
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
					if mv.Kind != yaml.ScalarNode {
						bad(mv, "compensation_handlers.%s.%s: want one handler name", opName.Value, mk.Value)
						continue
					}
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
			if v.Kind != yaml.MappingNode {
				bad(v, "%s: want name → {enable_saga, saga_operations}", k.Value)
				continue
			}
			out := map[string]Override{}
			for j := 0; j+1 < len(v.Content); j += 2 {
				who, body := v.Content[j], v.Content[j+1]
				p.lines[k.Value+"/"+who.Value] = who.Line
				if who.Value == "" {
					bad(who, "%s: empty name", k.Value)
				}
				var o Override
				if body.Kind != yaml.MappingNode {
					bad(body, "%s.%s: want {enable_saga, saga_operations}", k.Value, who.Value)
					continue
				}
				for f := 0; f+1 < len(body.Content); f += 2 {
					fk, fv := body.Content[f], body.Content[f+1]
					switch fk.Value {
					case "enable_saga":
						var b bool
						if err := fv.Decode(&b); err != nil {
							bad(fv, "%s.%s.enable_saga: want true or false", k.Value, who.Value)
						}
						o.EnableSaga = &b
					case "saga_operations":
						ops := []string{}
						if err := fv.Decode(&ops); err != nil {
							bad(fv, "%s.%s.saga_operations: want a list of operation names", k.Value, who.Value)
						}
						o.SagaOperations = ops
					default:
						bad(fk, "%s.%s: unknown key %q", k.Value, who.Value, fk.Value)
					}
				}
				out[who.Value] = o
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
			op.Milestones = []Milestone{}
			for _, m := range v.Content {
				var ms Milestone
				switch m.Kind {
				case yaml.ScalarNode:
					ms.Name = m.Value
				case yaml.MappingNode:
					for f := 0; f+1 < len(m.Content); f += 2 {
						fk, fv := m.Content[f], m.Content[f+1]
						if fk.Value == "after" {
							ms.After = parseAfter(fv, bad)
							continue
						}
						if fv.Kind != yaml.ScalarNode {
							bad(fv, "milestone %s: want a name", fk.Value)
							continue
						}
						switch fk.Value {
						case "name":
							ms.Name = fv.Value
						case "compensation":
							ms.Compensation = fv.Value
						default:
							bad(fk, "milestone: unknown key %q (want name, compensation, after)", fk.Value)
						}
					}
				default:
					bad(m, "milestone: want a name or {name, compensation, after}")
					continue
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
			if v.Kind != yaml.ScalarNode {
				bad(v, "on_engine_unavailable: want %s or %s", RunWithoutSaga, Fail)
				continue
			}
			op.OnEngineUnavailable = Fallback(v.Value)
		case "timeout":
			d, err := time.ParseDuration(v.Value)
			if err != nil || v.Kind != yaml.ScalarNode {
				bad(v, "timeout: want a duration such as 30m")
				continue
			}
			op.Timeout = d
		case "durability":
			if v.Kind != yaml.ScalarNode {
				bad(v, "durability: want strict or pipelined")
				continue
			}
			op.Durability = v.Value
		default:
			bad(k, "unknown key %q", k.Value)
		}
	}
	return probs
}

// parseAfter reads a milestone's after: a list of milestone names, or
// one name.
func parseAfter(v *yaml.Node, bad func(*yaml.Node, string, ...any)) []string {
	if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
		return []string{v.Value}
	}
	var names []string
	if err := v.Decode(&names); err != nil || v.Kind != yaml.SequenceNode {
		bad(v, "milestone after: want a list of milestone names")
		return nil
	}
	return append([]string{}, names...)
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
