package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
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
		admin:     fs.String("admin", "", "admin address host:port (default: global.admin of -c FILE, or "+config.DefaultAdmin+" when the default file does not exist)"),
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
		switch {
		case err != nil && !f.configSet && errors.Is(err, os.ErrNotExist):
			// No file where the default says: a box run with its file elsewhere, or a laptop
			// with a tunnel to one. The default admin address is the daemon's default too.
			addr = netip.MustParseAddrPort(config.DefaultAdmin)
		case err != nil:
			return nil, fmt.Errorf("reading the admin address from %s (or give -admin): %w", *f.config, err)
		default:
			addr, token = a, tok
		}
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

const serverUsage = `usage: pairlb server drain|disable|enable [VIRTUAL_SERVICE] ADDRESS [-admin ADDR] [-c FILE] [-token-file FILE]
       pairlb server wait-drained ADDRESS [--timeout D] [-admin ADDR] [-c FILE] [-token-file FILE]

Sets a real server's state in the running daemon until the next reload that changes it in the
file. drain and disable take no new connections and leave open ones alone.

With VIRTUAL_SERVICE, ADDRESS is the real server as that service's entry writes it: 10.11.1.11
or 10.11.1.12:4443. Without it, the state is set in every virtual service that has the address,
at once, and each real server changed is printed on a line of its own: an IP (10.11.1.11) names
every real server at that IP whatever its port; IP:port (10.11.1.12:4443) only those the file
writes with that port. An address no service has is an error.

wait-drained waits until no real server ADDRESS names has a connection or UDP session open,
printing the count when it changes, and exits 0; it exits 1 at once if the address is still
enabled somewhere, and when --timeout passes first (default: no limit).
`

// waitDrainedEvery is how often wait-drained asks the daemon.
const waitDrainedEvery = 500 * time.Millisecond

func cmdServer(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, serverUsage); fs.PrintDefaults() }
	af := addClientFlags(fs)
	timeout := fs.Duration("timeout", 0, "wait-drained: give up after D (0: no limit)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) == 0 {
		fs.Usage()
		return 2
	}
	action := pos[0]
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	switch {
	case action != "drain" && action != "disable" && action != "enable" && action != "wait-drained":
		fmt.Fprintf(stderr, "pairlb server: unknown action %q: want drain, disable, enable or wait-drained\n", action)
		return 2
	case len(pos) != 2 && (len(pos) != 3 || action == "wait-drained"):
		fs.Usage()
		return 2
	case timeoutSet && action != "wait-drained":
		fmt.Fprintln(stderr, "pairlb server: --timeout is for wait-drained")
		return 2
	case *timeout < 0:
		fmt.Fprintf(stderr, "pairlb server: --timeout %s: want a duration of 0 (no limit) or more\n", *timeout)
		return 2
	}
	if len(pos) == 2 {
		// The API checks the address too; here a name where the address belongs (a service
		// without its server, say) is a usage error, before asking anything.
		if _, _, err := config.ParseRealServerAddr(pos[1]); err != nil {
			fmt.Fprintf(stderr, "pairlb server: %q: %v: want an address (10.11.1.11 or 10.11.1.12:4443), or VIRTUAL_SERVICE ADDRESS for one service\n\n", pos[1], err)
			fs.Usage()
			return 2
		}
	}
	c, err := af.client(fs)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb server:", err)
		return 1
	}
	switch {
	case action == "wait-drained":
		return waitDrained(c, pos[1], *timeout, stdout, stderr)
	case len(pos) == 2:
		ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
		defer cancel()
		out, err := c.SetAddressState(ctx, pos[1], action)
		if err != nil {
			fmt.Fprintln(stderr, "pairlb server:", err)
			return 1
		}
		for _, rs := range out.RealServers {
			fmt.Fprintf(stdout, "%s %s: %s (was %s, active %d)\n", rs.VirtualService, rs.RealServer, rs.State, rs.Was, rs.Active)
		}
		return 0
	}
	vs, rs := pos[1], pos[2]
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

// waitDrained is `pairlb server wait-drained ADDRESS`: admin.Client.WaitDrained with a line
// each time the count changes, and the final verdict.
func waitDrained(c *admin.Client, addr string, timeout time.Duration, stdout, stderr io.Writer) int {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	st, err := c.WaitDrained(ctx, addr, waitDrainedEvery, func(st *admin.AddressState) {
		if st.Active > 0 {
			fmt.Fprintf(stdout, "%s: %d active (%s)\n", st.Address, st.Active, openOn(st))
		}
	})
	switch {
	case errors.Is(err, context.DeadlineExceeded) && st != nil:
		fmt.Fprintf(stderr, "pairlb server wait-drained: %s: still %d active after %s (%s)\n", st.Address, st.Active, timeout, openOn(st))
		return 1
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(stderr, "pairlb server wait-drained: %s: --timeout %s passed before the daemon answered: %v\n", addr, timeout, err)
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "pairlb server wait-drained:", err)
		return 1
	}
	services := make([]string, 0, len(st.RealServers))
	for _, rs := range st.RealServers {
		services = append(services, rs.VirtualService)
	}
	fmt.Fprintf(stdout, "%s: drained: nothing open in %s\n", st.Address, strings.Join(services, ", "))
	return 0
}

// openOn lists the real servers of st that have something open: "web 10.11.1.11 2, sip 10.11.1.11:5061 1".
func openOn(st *admin.AddressState) string {
	var parts []string
	for _, rs := range st.RealServers {
		if rs.Active > 0 {
			parts = append(parts, fmt.Sprintf("%s %s %d", rs.VirtualService, rs.RealServer, rs.Active))
		}
	}
	return strings.Join(parts, ", ")
}
