package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/pair"
)

// `pairlb keepalived` renders keepalived.conf for one node of the pair. keepalived in turn runs
// two hidden helpers of the same binary: `keepalived check`, its track script, and `keepalived
// notify`, its notify script.

const keepalivedUsage = `usage:
  pairlb keepalived [-c FILE] [--node NAME] [-binary PATH] [-o OUT]
      print keepalived.conf for NAME (default: the node owning one of this box's addresses)
  pairlb keepalived check -admin ADDR [-token-file FILE] [-timeout 1s]
      (keepalived's track script) exit 0 when pairlb at ADDR answers /readyz with 200
  pairlb keepalived notify -admin ADDR [-token-file FILE] GROUP|INSTANCE NAME STATE [PRIORITY]
      (keepalived's notify script) log the transition; on MASTER ask pairlb to re-apply its
      running configuration (the routing of the VIPs that arrived; the file is not read)
`

func cmdKeepalived(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "check":
			return cmdKeepalivedCheck(args[1:], stderr)
		case "notify":
			return cmdKeepalivedNotify(args[1:], stderr)
		}
	}
	fs := flag.NewFlagSet("keepalived", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, keepalivedUsage) }
	path := fs.String("c", defaultConfig, "configuration file")
	node := fs.String("node", "", "the pair node to render for (default: the one owning an address of this box)")
	binary := fs.String("binary", "", "absolute path of pairlb on the node (default: "+pair.DefaultBinary+")")
	out := fs.String("o", "", "write to this file (mode 0600, replaced atomically) instead of standard output")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pairlb keepalived: unexpected argument %q\n%s", fs.Arg(0), keepalivedUsage)
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	name, err := pair.LocalNode(cfg, *node)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb keepalived:", err)
		return 1
	}
	conf, err := pair.RenderKeepalived(cfg, name, pair.KeepalivedOptions{Binary: *binary})
	if err != nil {
		fmt.Fprintln(stderr, "pairlb keepalived:", err)
		return 1
	}
	if *out == "" {
		_, _ = stdout.Write(conf)
		return 0
	}
	if err := writeFileAtomic(*out, conf, 0o600); err != nil {
		fmt.Fprintln(stderr, "pairlb keepalived:", err)
		return 1
	}
	return 0
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(mode); err == nil {
		_, err = tmp.Write(data)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		return nil
	}
	tmp.Close()
	return fmt.Errorf("writing %s: setting mode: %w", path, err)
}

// adminFlags are the flags both helpers take: where the local pairlb's admin API is.
type adminFlags struct {
	admin     *string
	tokenFile *string
	timeout   *time.Duration
}

func newAdminFlags(fs *flag.FlagSet, timeout time.Duration) adminFlags {
	return adminFlags{
		admin:     fs.String("admin", config.DefaultAdmin, "address:port of pairlb's admin API"),
		tokenFile: fs.String("token-file", "", "file holding the admin API's bearer token"),
		timeout:   fs.Duration("timeout", timeout, "how long to wait for an answer"),
	}
}

// client is the admin client the flags name, with the token of -token-file.
func (f adminFlags) client() (*admin.Client, error) {
	var tok []byte
	if *f.tokenFile != "" {
		var err error
		if tok, err = config.ReadAdminToken(*f.tokenFile); err != nil {
			return nil, err
		}
	}
	return admin.NewClient(*f.admin, tok), nil
}

// cmdKeepalivedCheck is keepalived's track script: it exits 0 only when the local pairlb says
// it is ready. keepalived puts the node in FAULT after the script fails `fall` times in a row,
// and the peer takes the VIPs.
func cmdKeepalivedCheck(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("keepalived check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	af := newAdminFlags(fs, time.Second)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *af.timeout)
	defer cancel()
	c, err := af.client()
	if err == nil {
		err = c.Ready(ctx)
	}
	var answered *admin.HTTPError
	switch {
	case errors.As(err, &answered):
		fmt.Fprintf(stderr, "pairlb keepalived check: not ready: %s/readyz answered %s\n", *af.admin, answered.Status)
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "pairlb keepalived check: not ready: %v\n", err)
		return 1
	}
	return 0
}

// cmdKeepalivedNotify is keepalived's notify script. keepalived appends the kind (GROUP or
// INSTANCE), the name, the new state and for an instance its priority. The transition goes to
// syslog (keepalived discards a script's output) and to standard error; on MASTER the local
// pairlb is asked to re-apply its running configuration (POST /api/v1/reapply), which installs
// the routing of the VIPs that just arrived. It is not a reload: an edit of the file that nobody
// reloaded must not come into force because of a failover. It always exits 0: keepalived
// ignores the status, and a failed re-apply is logged by pairlb.
func cmdKeepalivedNotify(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("keepalived notify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	af := newAdminFlags(fs, 3*time.Second)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) < 3 {
		fmt.Fprintf(stderr, "pairlb keepalived notify: want GROUP|INSTANCE NAME STATE [PRIORITY], got %q\n", rest)
		return 2
	}
	kind, name, state := rest[0], rest[1], rest[2]
	msg := fmt.Sprintf("pair transition: %s %s is now %s", strings.ToLower(kind), name, state)
	if len(rest) > 3 {
		msg += " (priority " + rest[3] + ")"
	}
	logNotify(stderr, state, msg)
	if state != "MASTER" {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), *af.timeout)
	defer cancel()
	c, err := af.client()
	if err == nil {
		_, err = c.Reapply(ctx)
	}
	if err != nil {
		logNotify(stderr, "FAULT", fmt.Sprintf("pair transition: asking pairlb at %s to re-apply its running configuration: %v", *af.admin, err))
	}
	return 0
}

// logNotify writes one line to syslog (daemon facility, tag pairlb) and to stderr.
func logNotify(stderr io.Writer, state, msg string) {
	fmt.Fprintln(stderr, msg)
	prio := syslog.LOG_NOTICE
	if state == "FAULT" {
		prio = syslog.LOG_WARNING
	}
	w, err := syslog.New(prio|syslog.LOG_DAEMON, "pairlb")
	if err != nil {
		return // no syslog daemon: stderr is all there is
	}
	defer w.Close()
	_, _ = w.Write([]byte(msg))
}
