package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// The files a configuration names are read by Load, with the same limits and checks for
// `pairlb validate` as for `pairlb run` and every reload; the Config then carries what they hold
// (Global.AdminToken, Pair.AuthSecret) so that nothing reads them a second time.

// ReadAdminToken reads a bearer token file: one word on one line, surrounding white space
// ignored. The commands that take a token file by flag use it too.
func ReadAdminToken(path string) ([]byte, error) {
	tok, _, err := readAdminToken(path)
	if err != nil {
		return nil, fmt.Errorf("admin token file %s: %w", path, err)
	}
	return tok, nil
}

func readAdminToken(path string) ([]byte, fs.FileMode, error) {
	b, mode, err := readFile(path, MaxSecretSize)
	if err != nil {
		return nil, 0, err
	}
	tok := bytes.TrimSpace(b)
	if len(tok) == 0 {
		return nil, 0, errors.New("the token file is empty")
	}
	if bytes.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, 0, errors.New("the token must be one word on one line, without control characters")
	}
	return tok, mode, nil
}

// readVRRPSecret reads the PASS secret: the first line of the file, 1-8 printable characters
// that keepalived reads as one word.
func readVRRPSecret(path string) (string, fs.FileMode, error) {
	data, mode, err := readFile(path, MaxSecretSize)
	if err != nil {
		return "", 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	s := strings.TrimSpace(line)
	if s == "" || len(s) > 8 {
		return "", 0, fmt.Errorf("want 1-8 characters on the first line, got %d", len(s))
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("\"'#!\\{}", c) {
			return "", 0, errors.New("want letters, digits and punctuation other than quotes, '#', '!', '\\', '{' and '}'")
		}
	}
	return s, mode, nil
}
