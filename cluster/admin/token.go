package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
)

// ErrUnauthorized: the request needs the admin token and did not carry it.
var ErrUnauthorized = errors.New("unauthorized")

// tokenBytes is the entropy of a generated token.
const tokenBytes = 32

// LoadToken reads the bearer token in path, creating it (32 random bytes,
// hex, mode 0600) when the file does not exist. A token file others may
// read is refused: the token is the key to every change.
func LoadToken(path string) (string, error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		tok := hex.EncodeToString(b)
		_, werr := f.WriteString(tok + "\n")
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			return "", fmt.Errorf("admin token: write %s: %w", path, err)
		}
		return tok, nil
	case !errors.Is(err, fs.ErrExist):
		return "", fmt.Errorf("admin token: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("admin token: %s has mode %v: others may read it; chmod 600 it", path, st.Mode().Perm())
	}
	return ReadToken(path)
}

// ReadToken reads a token file as LoadToken wrote it.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 16 || len(tok) > 1024 || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("admin token: %s does not hold a token", path)
	}
	return tok, nil
}

// RequireToken guards h: every request that changes something (any method
// but GET and HEAD) and every request under /debug/ (pprof) must carry
// "Authorization: Bearer <token>". Reads of the API and /metrics stay open.
func RequireToken(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		guarded := (r.Method != http.MethodGet && r.Method != http.MethodHead) || strings.HasPrefix(r.URL.Path, "/debug/")
		if guarded && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cairn"`)
			reply(w, 0, nil, fmt.Errorf("%w: %s %s needs the admin token (cairn: --token-file or $CAIRN_TOKEN)", ErrUnauthorized, r.Method, r.URL.Path))
			return
		}
		h.ServeHTTP(w, r)
	})
}
