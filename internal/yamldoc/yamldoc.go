// Package yamldoc holds what the YAML files of the project (sagad's
// config, the tokens file, the remote endpoints) share in reading them.
package yamldoc

import (
	"errors"
	"io"

	"gopkg.in/yaml.v3"
)

// More reports whether dec, past the document it decoded, holds another
// one that is not empty: a file whose settings after a line "---" would
// be ignored without a word unless its reader refuses it. Empty
// documents, as a trailing "---" makes, do not count; text that is not
// YAML does.
func More(dec *yaml.Decoder) bool {
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if errors.Is(err, io.EOF) {
			return false
		}
		if err == nil && len(more.Content) == 1 && more.Content[0].Tag == "!!null" {
			continue
		}
		return true
	}
}
