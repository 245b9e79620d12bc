package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const minimalService = "virtual_services:\n  - {name: web, vip: 198.51.100.10, ports: [\"443/tcp\"], real_servers: [{address: 198.18.2.11}]}\n"

func writeConfig(t *testing.T, name, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestLoadHash: a reload reports the hash of the file it rejected, which is the one Load gives
// the same bytes when they validate; HashFile gives that hash for the file as it is now, and
// refuses what Load refuses, at once.
func TestLoadHash(t *testing.T) {
	good := "global:\n  admin: 127.0.0.1:9191\n" + minimalService
	bad := good + "    bogus: 1\n"
	cfg, h, err := LoadHash(writeConfig(t, "good.yaml", good))
	if err != nil || cfg.Hash != sha(good) || h != cfg.Hash {
		t.Fatalf("good file: hash %q, Config.Hash %q, %v; want %s", h, cfg.Hash, err, sha(good))
	}
	cfg, h, err = LoadHash(writeConfig(t, "bad.yaml", bad))
	var errs Errors
	if cfg != nil || !errors.As(err, &errs) || h != sha(bad) {
		t.Errorf("rejected file: %v, hash %q, %v; want its hash %s and its errors", cfg, h, err, sha(bad))
	}
	if _, h, err := LoadHash(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || h != "" {
		t.Errorf("missing file: hash %q, %v", h, err)
	}

	p := writeConfig(t, "disk.yaml", bad)
	if got, err := HashFile(p); err != nil || got != sha(bad) {
		t.Errorf("HashFile: %q %v, want %s", got, err, sha(bad))
	}
	for kind, path := range specialFiles(t, MaxConfigSize+1) {
		err := within(t, "HashFile of "+kind, func() error { _, err := HashFile(path); return err })
		want := ErrNotRegular
		if kind == "more than the limit:" {
			want, kind = ErrTooLarge, "at most 4,194,304"
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), path) {
			t.Errorf("HashFile of %s: %v, want %v naming %q and the path", path, err, want, kind)
		}
	}
}

// TestLoadAdmin: what `pairlb reload` and `pairlb status` need of a file, read even when the
// rest of the file does not validate, with the checks of the two keys and of the file's syntax.
func TestLoadAdmin(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		addr       string // want, when no error
		token      string
		err        []string // every one in the error
	}{
		{"valid", "global:\n  admin: 127.0.0.1:9191\n  admin_token_file: " + token + "\n" + minimalService, "127.0.0.1:9191", "s3cret", nil},
		{"no global", minimalService, DefaultAdmin, "", nil},
		{"errors elsewhere", "global:\n  admin: 127.0.0.1:9191\n  drain_timeout: 1ms\n  bogus_global: 1\nbogus_top: 1\nvirtual_services:\n  - {name: web, vip: 10.0.0.300, ports: [\"70000/tcp\"]}\n", "127.0.0.1:9191", "", nil},
		{"no services", "global:\n  admin: \"[::1]:9292\"\n", "[::1]:9292", "", nil},
		{"bad admin", "global:\n  admin: 127.0.0.1:99999\n" + minimalService, "", "", []string{"bad.yaml:2", "global.admin", "99999"}},
		{"duplicate admin", "global:\n  admin: 127.0.0.1:9191\n  admin: 127.0.0.1:9192\n" + minimalService, "", "", []string{"bad.yaml:3", "global.admin", "duplicate key"}},
		{"missing token", "global:\n  admin_token_file: " + filepath.Join(dir, "nope") + "\n" + minimalService, "", "", []string{"bad.yaml:2", "global.admin_token_file", "no such file"}},
		{"token a directory", "global:\n  admin_token_file: " + dir + "\n" + minimalService, "", "", []string{"global.admin_token_file", "a directory"}},
		{"global not a mapping", "global: [1]\n" + minimalService, "", "", []string{"bad.yaml:1", "global", "want a mapping"}},
		{"syntax", "global:\n  admin: [\n", "", "", []string{"bad.yaml:"}},
		{"not a mapping", "- 1\n", "", "", []string{"bad.yaml:1", "want a mapping"}},
		{"empty", "", "", "", []string{"empty file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, tok, err := LoadAdmin(writeConfig(t, "bad.yaml", tc.file))
			if tc.err == nil {
				if err != nil || addr.String() != tc.addr || string(tok) != tc.token {
					t.Errorf("got %s %q %v; want %s %q", addr, tok, err, tc.addr, tc.token)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %s %q, want an error", addr, tok)
			}
			for _, w := range tc.err {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
	if _, _, err := LoadAdmin(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}
