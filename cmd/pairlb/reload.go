package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pairlb/pairlb/admin"
)

// The exit statuses of `pairlb reload`, which systemd's ExecReload and scripts read.
const (
	exitRejected    = 1 // the file has errors or cannot be applied; the running configuration stays
	exitUsage       = 2
	exitUnreachable = 3 // the daemon could not be asked, or did not answer with a verdict
)

// reloadTimeout bounds the reload's request: the daemon reads the file and the files it names
// within config.ReadTimeout each, then applies it.
const reloadTimeout = 30 * time.Second

const reloadUsage = `usage: pairlb reload [-c FILE] [-admin ADDR] [-token-file FILE]

Asks the running pairlb, through its admin API, to read its configuration file again and apply
it, and prints what changed, or every error of the file, one per line as pairlb validate prints
them. The daemon reads the file it was started with: -c FILE only says where to find its admin
address and token (global.admin, global.admin_token_file), which are read even when the rest of
FILE has errors.

Exit status: 0 applied (also when nothing changed); 1 rejected: the file has errors or cannot be
applied, and the running configuration stays; 2 usage; 3 the daemon could not be asked (nothing
listens at the admin address, the token is wrong, no answer within 30 s).
`

func cmdReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, reloadUsage); fs.PrintDefaults() }
	af := addClientFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) > 0 {
		fs.Usage()
		return exitUsage
	}
	c, err := af.client(fs)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb reload:", err)
		return exitUnreachable
	}
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	v, err := c.Reload(ctx)
	if v != nil && af.configSet && !sameFile(v.File, *af.config) {
		fmt.Fprintf(stderr, "pairlb reload: note: the daemon at %s runs %s, not %s, and read its own file (another file needs a restart with -c)\n", c.Addr, v.File, *af.config)
	}
	switch {
	case err == nil:
		admin.WriteReload(stdout, v)
		return 0
	case v != nil:
		admin.WriteReload(stderr, v)
		return exitRejected
	}
	fmt.Fprintln(stderr, "pairlb reload:", err)
	return exitUnreachable
}

// sameFile reports whether a and b name one file; when either cannot be looked at (the daemon's
// path may be relative to its own directory), nothing is claimed.
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA != nil || errB != nil || os.SameFile(fa, fb)
}
