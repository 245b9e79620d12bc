// Package layout keeps docs/architecture.md's map of the house true: its test reads the table
// of packages and what each may import from that page, and fails when a package of the module
// imports another the table does not allow it (lb, routing and health never import each other;
// nothing imports cmd or bench), or when a package is missing from the table.
//
// It holds no code that ships: only the test and the page's name.
package layout

// Doc is the page, relative to the module's root, whose table the test checks.
const Doc = "docs/architecture.md"
