package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestErrorfWrapsErrors keeps out fmt.Errorf calls that wrap a sentinel
// with %w but format an error argument with %v or %s: the inner error is
// then flattened to text and errors.Is/As cannot see it ("%w: %v" with a
// sentinel and err). Wrap both with %w. An argument counts as an error by
// its name (err, cerr, lastErr, x.err, ctx.Err()): a scan of the syntax,
// not a type check, so name error values so.
func TestErrorfWrapsErrors(t *testing.T) {
	root := moduleRoot(t)
	files := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (n == "testdata" || n == "vendor" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		files++
		rel, _ := filepath.Rel(root, path)
		for _, bad := range errorfFlattens(t, path) {
			t.Errorf("%s:%d: fmt.Errorf(%s) formats the error %s with %%%c next to %%w: wrap it with %%w",
				rel, bad.line, bad.format, bad.arg, bad.verb)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("scanned %d Go files under %s: the check checked nothing", files, root)
	}
}

// TestErrorfCheck: the check itself finds what it must and only that.
func TestErrorfCheck(t *testing.T) {
	src := `package p
import ("errors"; "fmt")
var errX = errors.New("x")
func f(err, cerr error, n int, s struct{ err error }) {
	_ = fmt.Errorf("%w: %v", errX, err)          // bad
	_ = fmt.Errorf("%w (%s)", err, cerr)         // bad
	_ = fmt.Errorf("a %d %w: %v", n, errX, s.err) // bad
	_ = fmt.Errorf("%w: %w", errX, err)
	_ = fmt.Errorf("%w: %v", errX, n)
	_ = fmt.Errorf("%v", err)
	_ = fmt.Errorf("100%% %w %v", errX, n)
}
`
	path := filepath.Join(t.TempDir(), "p.go")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, b := range errorfFlattens(t, path) {
		got = append(got, b.line)
	}
	if want := []int{5, 6, 7}; !slicesEqual(got, want) {
		t.Errorf("flagged lines %v, want %v", got, want)
	}
}

func slicesEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

type flattened struct {
	line   int
	format string
	arg    string
	verb   byte
}

// errorfFlattens returns the fmt.Errorf calls in a file that have a %w
// verb and an error argument under %v or %s.
func errorfFlattens(t *testing.T, path string) []flattened {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var out []flattened
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || !isFmtErrorf(call.Fun) || len(call.Args) < 2 {
			return true
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		format, err := strconv.Unquote(lit.Value)
		if err != nil {
			return true
		}
		verbs, ok := formatVerbs(format)
		if !ok || !strings.ContainsRune(string(verbs), 'w') {
			return true
		}
		for i, v := range verbs {
			if i+1 >= len(call.Args) || (v != 'v' && v != 's') {
				continue
			}
			if name, ok := errorName(call.Args[i+1]); ok {
				out = append(out, flattened{fset.Position(call.Pos()).Line, lit.Value, name, v})
			}
		}
		return true
	})
	return out
}

func isFmtErrorf(fun ast.Expr) bool {
	sel, ok := fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Errorf" {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == "fmt"
}

// formatVerbs returns the verb of each argument a format consumes, in
// order; ok is false for formats it does not follow (explicit argument
// indexes, * widths), which it leaves alone.
func formatVerbs(format string) (verbs []byte, ok bool) {
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		i++
		for i < len(format) && strings.IndexByte("+-# 0123456789.", format[i]) >= 0 {
			i++
		}
		if i >= len(format) {
			return verbs, true
		}
		switch c := format[i]; c {
		case '%':
		case '[', '*':
			return nil, false
		default:
			verbs = append(verbs, c)
		}
	}
	return verbs, true
}

// errorName reports whether an argument is, by its name, an error value:
// an identifier or field err, or one ending in "err"/"Err", or a call of
// a method Err.
func errorName(e ast.Expr) (string, bool) {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name, isErrName(x.Name)
	case *ast.SelectorExpr:
		return x.Sel.Name, isErrName(x.Sel.Name)
	case *ast.CallExpr:
		if sel, ok := x.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Err" && len(x.Args) == 0 {
			return sel.Sel.Name + "()", true
		}
	}
	return "", false
}

func isErrName(n string) bool {
	return n == "err" || strings.HasSuffix(n, "err") || strings.HasSuffix(n, "Err")
}
