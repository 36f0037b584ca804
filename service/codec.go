package service

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// strictJSON is connect's JSON codec but for unknown fields, which it
// refuses (CodeInvalidArgument) where connect's own discards them: a
// field this server does not know (a newer client's option, a typo) would
// otherwise be dropped silently and the call would do something else than
// asked. Binary protobuf (gRPC) keeps protobuf's rules.
type strictJSON struct{ name string }

// jsonCodecs replace connect's two JSON codecs.
func jsonCodecs() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(strictJSON{"json"}),
		connect.WithCodec(strictJSON{"json; charset=utf-8"}),
	}
}

func (c strictJSON) Name() string { return c.name }

func (strictJSON) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("service: %T is not a protobuf message", v)
	}
	return protojson.MarshalOptions{}.Marshal(m)
}

func (strictJSON) Unmarshal(b []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("service: %T is not a protobuf message", v)
	}
	if len(b) == 0 {
		return errors.New("an empty body is not a JSON object (send {})")
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(b, m); err != nil {
		return fmt.Errorf("malformed JSON request (unknown fields are refused): %w", err)
	}
	return nil
}
