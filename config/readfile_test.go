package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// specialFiles makes the files a configuration must never be allowed to name: a FIFO (opening
// it for reading waits for a writer, reading it waits for EOF), /dev/zero (never ends), a
// directory and a file over the limit.
func specialFiles(t *testing.T, oversize int64) map[string]string {
	t.Helper()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("a", int(oversize))), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/zero"); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"a named pipe (FIFO)":  fifo,
		"a character device":   "/dev/zero",
		"a directory":          dir,
		"more than the limit:": big,
	}
}

// within runs f and fails the test unless it returns before the deadline: "at once" means well
// before ReadTimeout, since nothing here needs a read to be cut short.
func within[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(ReadTimeout / 2):
		t.Fatalf("%s did not return within %s", what, ReadTimeout/2)
		panic("unreachable")
	}
}

func TestReadFile(t *testing.T) {
	for kind, path := range specialFiles(t, 101) {
		err := within(t, "ReadFile of "+kind, func() error { _, err := ReadFile(path, 100); return err })
		want := ErrNotRegular
		if kind == "more than the limit:" {
			want, kind = ErrTooLarge, "101 bytes, at most 100"
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), path) {
			t.Errorf("ReadFile(%s): %v, want %v naming %q and the path", path, err, want, kind)
		}
	}
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	if err := os.WriteFile(ok, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(ok, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ok, link} {
		if b, err := ReadFile(p, 10); err != nil || string(b) != "0123456789" {
			t.Errorf("ReadFile(%s) = %q, %v", p, b, err)
		}
	}
	if _, err := ReadFile(filepath.Join(dir, "missing"), 10); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestLoadNamedFiles: validate (config.Load) reads the token and the VRRP secret the way run
// does, and refuses at once, at the line of the key, any file that would stall or flood a reload.
func TestLoadNamedFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := write("token", "s3cret\n", 0o600)
	secret := write("vrrp.secret", "Lync2013\n", 0o600)
	files := 0
	file := func(tokenFile, secretFile string) string {
		files++
		return write(fmt.Sprintf("pairlb%d.yaml", files), "global:\n  admin_token_file: "+tokenFile+"\n"+pairFile(validPair+"  auth_secret_file: "+secretFile+"\n"), 0o644)
	}
	// The token key is on line 2, the secret key on line 15.
	cfg, err := Load(file(token, secret))
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.Global.AdminToken) != "s3cret" || cfg.Pair.AuthSecret != "Lync2013" || len(cfg.Warnings) != 0 {
		t.Errorf("token %q, secret %q, warnings %v", cfg.Global.AdminToken, cfg.Pair.AuthSecret, cfg.Warnings)
	}
	// pair.TestRenderKeepalivedFromLoad renders from the secret Load reads.

	for kind, path := range specialFiles(t, MaxSecretSize+1) {
		want := kind
		if kind == "more than the limit:" {
			want = "4,097 bytes, at most 4,096"
		}
		for _, tc := range []struct {
			key  string
			line int
			src  string
		}{
			{"global.admin_token_file", 2, file(path, secret)},
			{"pair.auth_secret_file", 15, file(token, path)},
		} {
			err := within(t, "Load with "+kind, func() error { _, err := Load(tc.src); return err })
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Path != tc.key || errs[0].Line != tc.line || errs[0].Value != path || !strings.Contains(errs[0].Msg, want) {
				t.Errorf("%s as %s: %v, want one error at line %d containing %q", kind, tc.key, err, tc.line, want)
			}
		}
	}

	// The same checks as before for the content.
	for _, tc := range []struct{ token, secret, key, msg string }{
		{"\n", "Lync2013", "global.admin_token_file", "the token file is empty"},
		{"two words", "Lync2013", "global.admin_token_file", "one word on one line"},
		{"s3cret", "123456789", "pair.auth_secret_file", "want 1-8 characters"},
		{"s3cret", "\n", "pair.auth_secret_file", "want 1-8 characters"},
		{"s3cret", "ab\"c", "pair.auth_secret_file", "other than quotes"},
	} {
		src := file(write("t2", tc.token, 0o600), write("s2", tc.secret, 0o600))
		var errs Errors
		if _, err := Load(src); !errors.As(err, &errs) || len(errs) != 1 || errs[0].Path != tc.key || !strings.Contains(errs[0].Msg, tc.msg) {
			t.Errorf("token %q, secret %q: %v, want %s: %q", tc.token, tc.secret, err, tc.key, tc.msg)
		}
	}

	// A secret others can read is a warning, with the line of its key.
	open := write("open-token", "s3cret\n", 0o644)
	if err := os.Chmod(open, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	cfg, err = Load(file(open, secret))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || cfg.Warnings[0].Line != 2 || !strings.Contains(cfg.Warnings[0].Msg, "readable by group or others (mode -rw-r--r--)") {
		t.Errorf("warnings %v", cfg.Warnings)
	}
}

// TestLoadConfigFile: the configuration file itself is read with the same bounds.
func TestLoadConfigFile(t *testing.T) {
	for kind, path := range specialFiles(t, MaxConfigSize+1) {
		err := within(t, "Load of "+kind, func() error { _, err := Load(path); return err })
		want := kind
		if kind == "more than the limit:" {
			want = "4,194,305 bytes, at most 4,194,304"
		}
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("Load(%s): %v, want %q", kind, err, want)
		}
	}
}

// TestLoadConnectionLogFile: Load (validate, run and every reload) refuses a connection log that
// could not be opened for appending, at the line of the key, naming the file and why.
func TestLoadConnectionLogFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "pairlb.yaml")
	load := func(to string) error {
		src := "global:\n  connection_log: {to: " + to + "}\n" + services(web)
		if err := os.WriteFile(conf, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		err := within(t, "Load with connection_log "+to, func() error { _, err := Load(conf); return err })
		return err
	}
	exists := filepath.Join(dir, "connections.log")
	if err := os.WriteFile(exists, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	aFile := filepath.Join(dir, "plain")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{filepath.Join(dir, "new.log"), exists, os.DevNull} {
		if err := load(ok); err != nil {
			t.Errorf("connection log %s: %v", ok, err)
		}
	}
	special := specialFiles(t, 1)
	cases := []struct{ to, msg string }{
		{filepath.Join(dir, "missing", "connections.log"), "directory " + filepath.Join(dir, "missing") + ": stat: no such file or directory"},
		{filepath.Join(aFile, "connections.log"), aFile + " is not a directory"},
		{special["a directory"], "it is a directory"},
		{special["a named pipe (FIFO)"], "it is a named pipe (FIFO)"},
		{"/dev/zero", "it is a character device"},
	}
	if os.Geteuid() != 0 {
		// Root may write anywhere access(2) is asked about, so this case needs another user.
		ro := filepath.Join(dir, "read-only")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct{ to, msg string }{filepath.Join(ro, "connections.log"), "directory " + ro + " is not writable by this process"})
	}
	for _, tc := range cases {
		err := load(tc.to)
		var errs Errors
		if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Path != "global.connection_log.to" || errs[0].Line != 2 || errs[0].Value != tc.to || !strings.Contains(errs[0].Msg, tc.msg) {
			t.Errorf("connection log %s: %v, want one error at line 2 containing %q", tc.to, err, tc.msg)
		}
	}
}
