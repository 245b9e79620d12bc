package config

import (
	"strconv"
	"strings"
)

// FieldError is one problem with a configuration file: where it is, which field, the value as
// written and what is wrong with it.
type FieldError struct {
	File  string
	Line  int    // 1-based; 0 when the problem has no place in the file
	Path  string // like virtual_services[2].ports[1]; empty for the whole file
	Value string // as written; empty when there is no value to show
	Msg   string
}

// Error renders the problem as `lync.yaml:14: virtual_services[2].ports[1]: "70000/tcp": port
// out of range 1-65535`, leaving out the parts it does not have.
func (e *FieldError) Error() string {
	var parts []string
	loc := e.File
	if e.Line > 0 {
		loc += ":" + strconv.Itoa(e.Line)
	}
	if loc != "" {
		parts = append(parts, loc)
	}
	if e.Path != "" {
		parts = append(parts, e.Path)
	}
	if e.Value != "" {
		parts = append(parts, strconv.Quote(e.Value))
	}
	parts = append(parts, e.Msg)
	return strings.Join(parts, ": ")
}

// Errors is every problem found in a file. Parse reports them all at once so that one run of
// `pairlb validate` is enough to fix a file.
type Errors []*FieldError

// Error renders one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find a *FieldError.
func (es Errors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}
