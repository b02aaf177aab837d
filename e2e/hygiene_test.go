package e2e

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMACsComparedInConstantTime scans the module's non-test Go sources: no
// MAC, signature or digest is compared with bytes.Equal, bytes.Compare or
// == on strings (which return early), and the SAS verifier uses hmac.Equal.
func TestMACsComparedInConstantTime(t *testing.T) {
	// macName matches expressions that hold a MAC, signature or digest.
	macName := regexp.MustCompile(`(?i)mac|sig|tag|digest|integrity|hmac`)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	files, constantTime := 0, 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || rel == "interop" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, path, src, 0)
		if err != nil {
			return nil // a file mid-edit elsewhere: not this test's concern
		}
		files++
		text := func(n ast.Node) string {
			return string(src[fset.Position(n.Pos()).Offset:fset.Position(n.End()).Offset])
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				pkg, _ := sel.X.(*ast.Ident)
				if pkg == nil {
					return true
				}
				name := pkg.Name + "." + sel.Sel.Name
				switch name {
				case "hmac.Equal", "subtle.ConstantTimeCompare":
					constantTime++
				case "bytes.Equal", "bytes.Compare":
					for _, a := range n.Args {
						if macName.MatchString(text(a)) {
							t.Errorf("%s: %s compares %s in variable time", fset.Position(n.Pos()), name, text(a))
						}
					}
				}
			case *ast.BinaryExpr:
				if n.Op != token.EQL && n.Op != token.NEQ {
					return true
				}
				for _, side := range []ast.Expr{n.X, n.Y} {
					if c, ok := side.(*ast.CallExpr); ok {
						if id, ok := c.Fun.(*ast.Ident); ok && id.Name == "string" && len(c.Args) == 1 && macName.MatchString(text(c.Args[0])) {
							t.Errorf("%s: == on %s compares in variable time", fset.Position(n.Pos()), text(side))
						}
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 || constantTime < 3 {
		t.Fatalf("scanned %d files, %d constant-time comparisons: the scan is not looking at the project", files, constantTime)
	}
	sas, err := os.ReadFile(filepath.Join(root, "attest", "sas.go"))
	if err != nil || !strings.Contains(string(sas), "hmac.Equal(") {
		t.Fatalf("attest/sas.go does not verify SAS signatures with hmac.Equal (%v)", err)
	}
	t.Logf("scanned %d files; %d constant-time comparisons", files, constantTime)
}
