package lb

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// TestOneWayToCloseAndCountADrop keeps two rules of the package true: a descriptor held raw is
// closed with sysClose (or resetFD, which closes through it), never with unix.Close or
// syscall.Close beside it; and a drop is counted with serviceStats.drop, never by adding to a
// counter directly, so that no drop is counted a second way that the status would miss.
func TestOneWayToCloseAndCountADrop(t *testing.T) {
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if fd, ok := n.(*ast.FuncDecl); ok && fd.Name.Name == "drop" && fd.Recv != nil {
				return false // the one place that adds to the drop counters
			}
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && (pkg.Name == "unix" || pkg.Name == "syscall") && sel.Sel.Name == "Close" {
				t.Errorf("%s: %s.Close; close a raw descriptor with sysClose", fset.Position(call.Pos()), pkg.Name)
			}
			if idx, ok := sel.X.(*ast.IndexExpr); ok && sel.Sel.Name == "Add" {
				if d, ok := idx.X.(*ast.SelectorExpr); ok && d.Sel.Name == "dropped" {
					t.Errorf("%s: a drop counted by dropped[...].Add; count it with serviceStats.drop", fset.Position(call.Pos()))
				}
			}
			return true
		})
	}
}
