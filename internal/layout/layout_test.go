package layout

import (
	"bufio"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pairlb/pairlb/"

// root is the module's root, two levels above this package.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod at %s: %v", dir, err)
	}
	return dir
}

var tick = regexp.MustCompile("`([a-z0-9/]+?)/?`")

// allowed reads the table between the page's imports markers: the first column names a
// package, the last lists the module's packages it may import.
func allowed(t *testing.T, dir string) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, Doc))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rules := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "<!-- imports:begin -->"):
			in = true
			continue
		case strings.Contains(line, "<!-- imports:end -->"):
			in = false
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cols := strings.Split(strings.Trim(line, "|"), "|")
		names := tick.FindAllStringSubmatch(cols[0], -1)
		var may []string
		for _, m := range tick.FindAllStringSubmatch(cols[len(cols)-1], -1) {
			may = append(may, m[1])
		}
		for _, n := range names {
			rules[n[1]] = may
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no table between <!-- imports:begin --> and <!-- imports:end -->", Doc)
	}
	return rules
}

// imports lists, for every package directory of the module, the module's packages its
// non-test files import.
func imports(t *testing.T, dir string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != dir && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(dir, filepath.Dir(path))
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		if _, ok := out[rel]; !ok {
			out[rel] = nil
		}
		for _, imp := range f.Imports {
			if p, ok := strings.CutPrefix(strings.Trim(imp.Path.Value, `"`), module); ok && !slices.Contains(out[rel], p) {
				out[rel] = append(out[rel], p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestImportsFollowTheMap(t *testing.T) {
	dir := root(t)
	rules := allowed(t, dir)
	for pkg, deps := range imports(t, dir) {
		may, ok := rules[pkg]
		if !ok {
			t.Errorf("package %s is not in %s's table: add it, with what it owns and may import", pkg, Doc)
			continue
		}
		for _, dep := range deps {
			if !slices.Contains(may, dep) {
				t.Errorf("%s imports %s, which %s does not allow it", pkg, dep, Doc)
			}
		}
	}
	for pkg := range rules {
		if _, err := os.Stat(filepath.Join(dir, pkg)); err != nil {
			t.Errorf("%s lists %s, which is no directory of the module", Doc, pkg)
		}
	}
}

// TestTheRulesSayWhatTheyMean guards the table itself against an edit that would make the
// check above pass vacuously.
func TestTheRulesSayWhatTheyMean(t *testing.T) {
	rules := allowed(t, root(t))
	for _, core := range []string{"lb", "routing", "health"} {
		for _, other := range []string{"lb", "routing", "health"} {
			if core != other && slices.Contains(rules[core], other) {
				t.Errorf("the table lets %s import %s: lb, routing and health never import each other", core, other)
			}
		}
	}
	for pkg, may := range rules {
		for _, dep := range may {
			if strings.HasPrefix(dep, "cmd") || dep == "bench" {
				t.Errorf("the table lets %s import %s: nothing imports cmd or bench", pkg, dep)
			}
		}
	}
}
