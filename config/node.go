package config

import (
	"cmp"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// The file is read as a yaml.Node tree and walked by hand rather than decoded into structs:
// every value keeps its line that way, unknown and duplicate keys are found in every mapping,
// and one walk collects every problem instead of stopping at the first.

// parser collects the problems of one file.
type parser struct {
	file string
	// files makes the parser read the files the configuration names (Load does, Parse not).
	files bool
	errs  reports
	warns reports
}

// MaxReported is how many errors (and, apart, warnings) one file reports: a broken 1 MB file
// could otherwise fill a terminal or the log with hundreds of thousands of lines. The first ones
// by line are kept, and one last entry says how many more there were.
const MaxReported = 100

// maxValue is how much of a value a message shows.
const maxValue = 80

// reports is a list of problems kept to the first MaxReported by line.
type reports struct {
	list    Errors
	dropped int
}

func (r *reports) add(e *FieldError) {
	r.list = append(r.list, e)
	// Compacting from time to time keeps memory bounded however many problems a file has,
	// and keeps exactly the first MaxReported by line (the sort is stable).
	if len(r.list) >= 10*MaxReported {
		r.compact()
	}
}

func (r *reports) compact() {
	slices.SortStableFunc(r.list, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
	if len(r.list) > MaxReported {
		r.dropped += len(r.list) - MaxReported
		clear(r.list[MaxReported:])
		r.list = r.list[:MaxReported]
	}
}

// final is the sorted list, with a last entry counting the problems left out.
func (r *reports) final(file, what string) Errors {
	if len(r.list) == 0 {
		return nil
	}
	r.compact()
	out := r.list
	if r.dropped > 0 {
		out = append(out, &FieldError{File: file, Msg: fmt.Sprintf("... and %s more %s (the first %d by line are shown)", groupDigits(int64(r.dropped)), what, MaxReported)})
	}
	return out
}

// fail records a problem at node n (nil: no line) with the value as written.
func (p *parser) fail(n *yaml.Node, path, value, format string, args ...any) {
	p.errs.add(p.report(n, path, value, format, args...))
}

// warn records a warning: a valid value that is probably not what the file means.
func (p *parser) warn(n *yaml.Node, path, value, format string, args ...any) {
	p.warns.add(p.report(n, path, value, format, args...))
}

func (p *parser) report(n *yaml.Node, path, value, format string, args ...any) *FieldError {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &FieldError{File: p.file, Line: line, Path: path, Value: short(value), Msg: fmt.Sprintf(format, args...)}
}

// bad records a problem with the value of node n.
func (p *parser) bad(n *yaml.Node, path, format string, args ...any) {
	p.fail(n, path, n.Value, format, args...)
}

// short cuts s to maxValue bytes (on a character boundary) for a message: a 2 MB value is
// reported, not echoed.
func short(s string) string { return cut(s, maxValue) }

// cut cuts s to n bytes, on a character boundary, saying how long it was.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "... (" + groupDigits(int64(len(s))) + " bytes)"
}

// fields is a YAML mapping checked against the keys it may hold.
type fields struct {
	node *yaml.Node // the mapping itself: its line is where a missing key is reported
	path string
	vals map[string]*yaml.Node // keys given a value; null or "" count as absent
}

// at is the field path of key.
func (f fields) at(key string) string { return join(f.path, key) }

// has reports whether key was given a value.
func (f fields) has(key string) bool { return f.vals[key] != nil }

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// deref follows an alias to the node it names, so that anchors work anywhere a value does.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return "a single value"
	}
}

// mapping checks that n is a mapping whose keys are all known and unique. It reports false when
// n is no mapping at all, so that callers need not also report each of its fields as missing.
func (p *parser) mapping(n *yaml.Node, path string, known ...string) (fields, bool) {
	f := fields{node: n, path: path, vals: map[string]*yaml.Node{}}
	if n.Kind != yaml.MappingNode {
		p.fail(n, path, n.Value, "want a mapping of %s, got %s", strings.Join(known, ", "), kindName(n))
		return f, false
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		switch {
		case k.Kind != yaml.ScalarNode:
			p.fail(k, path, "", "a key must be a plain name, got %s", kindName(k))
		case k.Value == "<<":
			p.fail(k, path, k.Value, "merge keys are not supported")
		case !slices.Contains(known, k.Value):
			p.fail(k, path, k.Value, "unknown key (want one of %s)", strings.Join(known, ", "))
		case seen[k.Value] != 0:
			p.fail(k, f.at(k.Value), "", "duplicate key, first given at line %d", seen[k.Value])
		default:
			seen[k.Value] = k.Line
			// Null and "" both mean "not set": files write `admin_token_file: ""` for an
			// optional setting left empty.
			if !isNull(v) && !(v.Kind == yaml.ScalarNode && v.Value == "") {
				f.vals[k.Value] = v
			}
		}
	}
	return f, true
}

// scalar is the single value at key, or nil when absent or not a single value.
func (p *parser) scalar(f fields, key string) *yaml.Node {
	n := f.vals[key]
	if n == nil {
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		p.fail(n, f.at(key), "", "want a single value, got %s", kindName(n))
		return nil
	}
	if !p.printable(n, f.at(key)) {
		return nil
	}
	return n
}

// printable reports whether a value holds no control character, reporting it when it does. No
// setting takes one, and in a header (health.host) or a file name a CR, LF or NUL would do harm:
// a quoted YAML string can carry them ("a\r\nb").
func (p *parser) printable(n *yaml.Node, path string) bool {
	i := strings.IndexFunc(n.Value, func(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) })
	if i < 0 {
		return true
	}
	r, _ := utf8.DecodeRuneInString(n.Value[i:])
	p.bad(n, path, "control character %U at byte %d: no setting takes one", r, i+1)
	return false
}

// boolean is the true or false at key, def when absent or wrong.
func (p *parser) boolean(f fields, key string, def bool) bool {
	n := p.scalar(f, key)
	if n == nil {
		return def
	}
	var b bool
	// The tag check keeps YAML 1.1 spellings (yes, on) and quoted "true" out: one way to write it.
	if n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		p.bad(n, f.at(key), "want true or false")
		return def
	}
	return b
}

// integer is the whole number at key, def when absent or wrong; outside lo..hi it is reported.
func (p *parser) integer(f fields, key string, def, lo, hi int) int {
	n := p.scalar(f, key)
	if n == nil {
		return def
	}
	var v int
	if wholeNumber.MatchString(n.Value) && (n.ShortTag() != "!!int" || n.Decode(&v) != nil) {
		// Digits only, yet no int: too many of them.
		p.bad(n, f.at(key), "out of range %d-%d", lo, hi)
		return def
	}
	if n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		p.bad(n, f.at(key), "want a whole number")
		return def
	}
	if v < lo || v > hi {
		p.bad(n, f.at(key), "out of range %d-%d", lo, hi)
		return def
	}
	return v
}

// duration is the Go duration at key ("1800s", "20m"), def when absent or wrong; outside lo..hi
// it is reported. A lo of 0 means any duration above zero.
func (p *parser) duration(f fields, key string, def, lo, hi time.Duration) time.Duration {
	n := p.scalar(f, key)
	if n == nil {
		return def
	}
	d, ok := p.parseDuration(n, f.at(key))
	if !ok {
		return def
	}
	switch {
	case lo == 0 && (d <= 0 || d > hi):
		p.bad(n, f.at(key), "out of range: more than 0, at most %s", seconds(hi))
		return def
	case lo > 0 && (d < lo || d > hi):
		p.bad(n, f.at(key), "out of range %s-%s", seconds(lo), seconds(hi))
		return def
	}
	return d
}

// idleTimeout is a connection idle timeout at key: 0 (none) or the appliance's 60s-86400s.
func (p *parser) idleTimeout(f fields, key string, def time.Duration) time.Duration {
	n := p.scalar(f, key)
	if n == nil {
		return def
	}
	d, ok := p.parseDuration(n, f.at(key))
	if !ok {
		return def
	}
	if d != 0 && (d < MinIdleTimeout || d > MaxIdleTimeout) {
		p.bad(n, f.at(key), "out of range: 0 (none) or %s-%s", seconds(MinIdleTimeout), seconds(MaxIdleTimeout))
		return def
	}
	return d
}

// wholeNumber is how an integer is written; durationSyntax is what time.ParseDuration reads.
var (
	wholeNumber    = regexp.MustCompile(`^[-+]?[0-9]+$`)
	durationSyntax = regexp.MustCompile(`^[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+$`)
)

func (p *parser) parseDuration(n *yaml.Node, path string) (time.Duration, bool) {
	// A bare 0 needs no unit; any other bare number does, since "1800" could mean seconds or
	// milliseconds depending on who reads it.
	if n.Value == "0" {
		return 0, true
	}
	d, err := time.ParseDuration(n.Value)
	switch {
	case err != nil && durationSyntax.MatchString(n.Value) && !strings.HasPrefix(n.Value, "-"):
		// Well written but beyond what a duration holds (about 292 years): the caller's
		// range check reports it with the range of the key.
		return math.MaxInt64, true
	case err != nil && durationSyntax.MatchString(n.Value):
		return math.MinInt64, true
	case err != nil && wholeNumber.MatchString(n.Value):
		p.bad(n, path, "a duration needs a unit, like 1800s or 30m (only 0 goes without)")
		return 0, false
	case err != nil:
		p.bad(n, path, "want a duration like 1800s or 20m")
		return 0, false
	}
	return d, true
}

// seconds writes a limit as the file would, in seconds when it is whole seconds.
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

// list is the items of the list at key (aliases followed), nil when absent or not a list.
func (p *parser) list(f fields, key string) []*yaml.Node {
	n := f.vals[key]
	if n == nil {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.fail(n, f.at(key), n.Value, "want a list, got %s", kindName(n))
		return nil
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, item := range n.Content {
		items[i] = deref(item)
	}
	return items
}

// listItem checks that a list item is a single value.
func (p *parser) listItem(n *yaml.Node, path string) bool {
	switch {
	case isNull(n):
		p.fail(n, path, "", "empty list item")
	case n.Kind != yaml.ScalarNode:
		p.fail(n, path, "", "want a single value, got %s", kindName(n))
	default:
		return p.printable(n, path)
	}
	return false
}

// section is the mapping at key checked against its known keys; when absent it is an empty one,
// so that every field takes its default.
func (p *parser) section(f fields, key string, known ...string) fields {
	if n := f.vals[key]; n != nil {
		sf, _ := p.mapping(n, f.at(key), known...)
		return sf
	}
	return fields{node: f.node, path: f.at(key), vals: map[string]*yaml.Node{}}
}

// required is the single value at key, reported when absent.
func (p *parser) required(f fields, key string) *yaml.Node {
	if !f.has(key) {
		p.fail(f.node, f.at(key), "", "required")
		return nil
	}
	return p.scalar(f, key)
}
