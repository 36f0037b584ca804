package auth

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sagaengine/saga/internal/yamldoc"
)

// MinSecretBytes is the shortest secret a secret file may hold.
const MinSecretBytes = 16

// fileFormat is a tokens file, as Parse describes it. The file itself
// need hold no secret: a token gives the SHA-256 of its secret (what
// `printf %s "$SECRET" | sha256sum` prints), or names a file holding it.
type fileFormat struct {
	Tokens []fileToken `yaml:"tokens"`
}

type fileToken struct {
	Name       string `yaml:"name"`
	Scope      string `yaml:"scope"`
	SHA256     string `yaml:"sha256"`
	SecretFile string `yaml:"secret_file"`
}

// Load reads the tokens file at path (the format is described on Parse).
// Errors: the file's, or ErrInvalidToken listing every problem at once.
func Load(path string) (*Tokens, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: tokens file: %w", err)
	}
	return Parse(path, b, filepath.Dir(path))
}

// Parse reads a tokens file's content; src names it in errors, and
// a relative secret_file is read from dir (the tokens file's directory). The
// format:
//
//	tokens:
//	  - name: checkout-service   # 1-64 of A-Z a-z 0-9 . _ @ -
//	    scope: service           # read, service, operator or admin
//	    sha256: 2c26b46b68ff…    # hex SHA-256 of the secret, or:
//	  - name: alice
//	    scope: operator
//	    secret_file: secrets/alice.token  # holds the secret (16 bytes or more), mode 0600
//
// Unknown keys, and a second YAML document, are refused. Every problem
// is reported at once, in an error wrapping ErrInvalidToken.
func Parse(src string, data []byte, dir string) (*Tokens, error) {
	var f fileFormat
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidToken, src, err)
	}
	// A second document (after "---") would be ignored, and its tokens
	// refused as unknown without a word: refuse the file.
	if yamldoc.More(dec) {
		return nil, fmt.Errorf("%w: %s holds more than one YAML document (a line \"---\" and more after it): put every token in one", ErrInvalidToken, src)
	}
	var probs []string
	var ts []Token
	for i, ft := range f.Tokens {
		what := fmt.Sprintf("token %d (%q)", i+1, ft.Name)
		t := Token{Name: ft.Name}
		if ft.Scope == "" {
			probs = append(probs, what+": scope is required (read, service, operator or admin)")
		} else if s, err := ParseScope(ft.Scope); err != nil {
			probs = append(probs, fmt.Sprintf("%s: unknown scope %q (want read, service, operator or admin)", what, ft.Scope))
		} else {
			t.Scope = s
		}
		switch {
		case (ft.SHA256 == "") == (ft.SecretFile == ""):
			probs = append(probs, what+": give exactly one of sha256 and secret_file")
		case ft.SHA256 != "":
			h, err := hex.DecodeString(ft.SHA256)
			if err != nil || len(h) != len(t.SHA256) {
				probs = append(probs, what+": sha256 is not 64 hex digits")
			} else {
				copy(t.SHA256[:], h)
			}
		default:
			secret, err := readSecret(dir, ft.SecretFile)
			if err != nil {
				probs = append(probs, fmt.Sprintf("%s: secret_file %s: %v", what, ft.SecretFile, err))
			} else {
				t.SHA256 = HashSecret(secret)
			}
		}
		ts = append(ts, t)
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("%w: %s: %s", ErrInvalidToken, src, strings.Join(probs, "; "))
	}
	tokens, err := New(ts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return tokens, nil
}

func readSecret(dir, path string) (string, error) {
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("mode %v lets others read it (chmod 600 it)", fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", err
	}
	secret := strings.TrimSpace(string(b))
	if len(secret) < MinSecretBytes {
		return "", fmt.Errorf("the secret is shorter than %d bytes", MinSecretBytes)
	}
	return secret, nil
}
