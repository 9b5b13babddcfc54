package admin

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.token")
	tok, err := LoadToken(path)
	if err != nil || len(tok) != 2*tokenBytes {
		t.Fatalf("first LoadToken: %q, %v", tok, err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", st.Mode(), err)
	}
	again, err := LoadToken(path)
	if err != nil || again != tok {
		t.Fatalf("second LoadToken: %q, %v; want the same token", again, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadToken(path); err == nil || !strings.Contains(err.Error(), "others may read it") {
		t.Fatalf("world-readable token file: %v", err)
	}
}

func TestRequireToken(t *testing.T) {
	h := RequireToken("s3cret-s3cret-s3cret", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}))
	for _, c := range []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/v1/volumes", "", http.StatusTeapot},
		{"GET", "/metrics", "", http.StatusTeapot},
		{"POST", "/v1/volumes", "", http.StatusUnauthorized},
		{"DELETE", "/v1/volumes/a", "Bearer wrong", http.StatusUnauthorized},
		{"DELETE", "/v1/volumes/a", "s3cret-s3cret-s3cret", http.StatusUnauthorized},
		{"DELETE", "/v1/volumes/a", "Bearer s3cret-s3cret-s3cret", http.StatusTeapot},
		{"GET", "/debug/pprof/", "", http.StatusUnauthorized},
		{"GET", "/debug/pprof/", "Bearer s3cret-s3cret-s3cret", http.StatusTeapot},
	} {
		r := httptest.NewRequest(c.method, c.path, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s %s (%q): %d, want %d", c.method, c.path, c.auth, w.Code, c.want)
		}
	}
}
