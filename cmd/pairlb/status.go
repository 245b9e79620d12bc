package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
)

// clientTimeout bounds each command's request to the admin API.
const clientTimeout = 10 * time.Second

// clientFlags are the flags every admin subcommand takes.
type clientFlags struct {
	admin, config, tokenFile *string
	configSet                bool
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	return &clientFlags{
		admin:     fs.String("admin", "", "admin address host:port (default: global.admin of -c FILE)"),
		config:    fs.String("c", defaultConfig, "configuration file to read global.admin and global.admin_token_file from"),
		tokenFile: fs.String("token-file", "", "file holding the admin bearer token (default: global.admin_token_file of -c FILE)"),
	}
}

// client resolves the admin address and token: flags win; what they leave out comes from the
// configuration file.
func (f *clientFlags) client(fs *flag.FlagSet) (*admin.Client, error) {
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "c" {
			f.configSet = true
		}
	})
	var addr netip.AddrPort
	var token []byte // read with the file that names it
	if *f.admin == "" || (*f.tokenFile == "" && f.configSet) {
		// Only the address and the token: the daemon is still asked when the rest of the file
		// has errors (a reload of a broken file, the status while it is not yet fixed).
		a, tok, err := config.LoadAdmin(*f.config)
		if err != nil {
			return nil, fmt.Errorf("reading the admin address from %s (or give -admin): %w", *f.config, err)
		}
		addr, token = a, tok
	}
	if *f.admin != "" {
		a, err := netip.ParseAddrPort(*f.admin)
		if err != nil {
			return nil, fmt.Errorf("-admin %q: want address:port like 127.0.0.1:9090", *f.admin)
		}
		addr = a
	}
	if *f.tokenFile != "" {
		tok, err := config.ReadAdminToken(*f.tokenFile)
		if err != nil {
			return nil, err
		}
		token = tok
	}
	return admin.NewClient(admin.DialAddr(addr).String(), token), nil
}

// parseInterspersed parses flags that may come before, between or after the positional
// arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

const statusUsage = `usage: pairlb status [-admin ADDR] [-c FILE] [-token-file FILE] [--json]

Shows every virtual service of the running daemon with its real servers: state, health,
connections and traffic. --json prints the admin API's answer as it is, for scripts.
`

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage); fs.PrintDefaults() }
	af := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fs.Usage()
		return 2
	}
	c, err := af.client(fs)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb status:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	if *asJSON {
		raw, err := c.StatusJSON(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "pairlb status:", err)
			return 1
		}
		var out bytes.Buffer
		if err := json.Indent(&out, raw, "", "  "); err != nil {
			out.Write(raw)
		}
		out.WriteByte('\n')
		_, _ = stdout.Write(out.Bytes())
		return 0
	}
	st, err := c.Status(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb status:", err)
		return 1
	}
	admin.WriteTable(stdout, st, time.Now())
	return 0
}

const serverUsage = `usage: pairlb server drain|disable|enable VIRTUAL_SERVICE ADDRESS [-admin ADDR] [-c FILE] [-token-file FILE]

Sets a real server's state in the running daemon until the next reload that changes it in the
file. ADDRESS is the real server as the file writes it: 10.11.1.11 or 10.11.1.12:4443.
drain and disable take no new connections and leave open ones alone.
`

func cmdServer(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, serverUsage); fs.PrintDefaults() }
	af := addClientFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 3 {
		fs.Usage()
		return 2
	}
	action, vs, rs := pos[0], pos[1], pos[2]
	if action != "drain" && action != "disable" && action != "enable" {
		fmt.Fprintf(stderr, "pairlb server: unknown action %q: want drain, disable or enable\n", action)
		return 2
	}
	c, err := af.client(fs)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb server:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	out, err := c.SetServerState(ctx, vs, rs, action)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb server:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s %s: %s\n", out.VirtualService, out.RealServer, out.State)
	return 0
}
