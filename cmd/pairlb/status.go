package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// adminClient talks to a running daemon's admin API.
type adminClient struct {
	base  string // http://host:port
	token []byte
	http  *http.Client
}

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
func (f *clientFlags) client(fs *flag.FlagSet) (*adminClient, error) {
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "c" {
			f.configSet = true
		}
	})
	var addr netip.AddrPort
	var tokenFile string
	var token []byte // read by config.Load with the file that names it
	if *f.admin == "" || (*f.tokenFile == "" && f.configSet) {
		cfg, err := config.Load(*f.config)
		if err != nil {
			return nil, fmt.Errorf("reading the admin address from %s (or give -admin): %w", *f.config, err)
		}
		addr, tokenFile, token = cfg.Global.Admin, cfg.Global.AdminTokenFile, cfg.Global.AdminToken
	}
	if *f.admin != "" {
		a, err := netip.ParseAddrPort(*f.admin)
		if err != nil {
			return nil, fmt.Errorf("-admin %q: want address:port like 127.0.0.1:9090", *f.admin)
		}
		addr = a
	}
	if *f.tokenFile != "" {
		tokenFile, token = *f.tokenFile, nil
	}
	// A listener on every address is reached on loopback.
	if addr.Addr().IsUnspecified() {
		lo := netip.IPv6Loopback()
		if addr.Addr().Is4() {
			lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		addr = netip.AddrPortFrom(lo, addr.Port())
	}
	c := &adminClient{base: "http://" + addr.String(), http: &http.Client{Timeout: 10 * time.Second}}
	c.token = token
	if tokenFile != "" && token == nil {
		tok, err := config.ReadAdminToken(tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = tok
	}
	return c, nil
}

// do sends a request and decodes a JSON answer into out; an answer other than 2xx is an error
// carrying the API's message.
func (c *adminClient) do(method, path string, out any) error {
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return err
	}
	if len(c.token) > 0 {
		req.Header.Set("Authorization", "Bearer "+string(c.token))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: reading the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e apiError
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			return fmt.Errorf("admin API: %s %s: %s", method, path, resp.Status)
		}
		msg := e.Error
		for _, s := range e.Errors {
			msg += "\n  " + s
		}
		return fmt.Errorf("admin API: %s (%s)", msg, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
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
	if *asJSON {
		var raw json.RawMessage
		if err := c.do(http.MethodGet, "/api/v1/status", &raw); err != nil {
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
	var st statusResponse
	if err := c.do(http.MethodGet, "/api/v1/status", &st); err != nil {
		fmt.Fprintln(stderr, "pairlb status:", err)
		return 1
	}
	printStatus(stdout, &st, time.Now())
	return 0
}

// printStatus renders the status as a table per virtual service.
func printStatus(w io.Writer, st *statusResponse, now time.Time) {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	hash := st.ConfigHash
	if len(hash) > 12 {
		hash = hash[:12]
	}
	fmt.Fprintf(w, "pairlb %s, %s, config %s (%s)\n", st.Version, ready, st.ConfigFile, hash)
	if r := st.Routing; r != nil && len(r.Problems) > 0 {
		fmt.Fprintln(w, "routing: parts of the plan not installed (retried when links or addresses change):")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  %s", p.Unit)
			if len(p.Services) > 0 {
				fmt.Fprintf(w, " (%s)", strings.Join(p.Services, ", "))
			}
			fmt.Fprintf(w, ": %s, for %s\n", p.Reason, now.Sub(p.Since).Round(time.Second))
		}
	}
	for _, vs := range st.VirtualServices {
		var ports []string
		for _, p := range vs.Ports {
			ports = append(ports, p.Port)
		}
		fmt.Fprintf(w, "\n%s  %s  [%s]", vs.Name, vs.VIP, strings.Join(ports, " "))
		if vs.Redirect != "" {
			fmt.Fprintf(w, "  redirect to %s  connections %d\n", vs.Redirect, vs.Accepted)
			continue
		}
		gw := "main table"
		if vs.Gateway != "" {
			gw = "gw " + vs.Gateway
		}
		fmt.Fprintf(w, "  %s  %s  active %d", gw, placementText(&vs.ServiceStatus), vs.Active)
		switch {
		case vs.UDPMoves > 0:
			fmt.Fprintf(w, " (udp sessions %d, moved %d)", vs.UDPSessions, vs.UDPMoves)
		case vs.UDPSessions > 0:
			fmt.Fprintf(w, " (udp sessions %d)", vs.UDPSessions)
		}
		fmt.Fprintf(w, "  connections %d  in %s  out %s", vs.Accepted, humanBytes(vs.BytesIn), humanBytes(vs.BytesOut))
		var drops []string
		for _, d := range vs.Dropped {
			if d.Count > 0 {
				drops = append(drops, fmt.Sprintf("%s %d", d.Reason, d.Count))
			}
		}
		if len(drops) > 0 {
			fmt.Fprintf(w, "  dropped %s", strings.Join(drops, ", "))
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  REAL SERVER\tSTATE\tHEALTH\tWEIGHT\tACTIVE\tTOTAL\tLAST CHECK")
		for _, rs := range vs.RealServers {
			hv, last := "down", ""
			if rs.Up {
				hv = "up"
			}
			if h := rs.Health; h != nil {
				hv += " (" + h.Check + ")"
				if h.Check == string(config.HealthNone) {
					last = "no check"
				} else if h.LastCheck != nil {
					last = fmt.Sprintf("%s ago, %s", now.Sub(*h.LastCheck).Round(time.Second),
						time.Duration(h.LastDurationSeconds*float64(time.Second)).Round(10*time.Microsecond))
				}
				if h.LastError != "" {
					last += ": " + h.LastError
				}
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%s\n", rs.Address, rs.State, hv, rs.Weight, rs.Active, rs.Total, last)
		}
		_ = tw.Flush()
	}
}

// placementText says what places a new client of vs and, with persistence, how full its table
// is: "leastconn", "leastconn + persistence 12/1048576", or, where the consistent hash places
// and the scheduler is not used, "hash (scheduler leastconn unused) + persistence 12/1048576".
func placementText(vs *lb.ServiceStatus) string {
	text := vs.Placement
	switch {
	case text == "": // a daemon older than placement
		text = vs.Scheduler
	case text != vs.Scheduler && vs.Scheduler != "":
		text = fmt.Sprintf("%s (scheduler %s unused)", text, vs.Scheduler)
	}
	if p := vs.Persistence; p != nil {
		text += fmt.Sprintf(" + persistence %d/%d", p.Entries, p.MaxEntries)
		if p.Evictions > 0 {
			text += fmt.Sprintf(" (%d evicted)", p.Evictions)
		}
	}
	return text
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
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
	var out serverActionResponse
	path := "/api/v1/virtual-services/" + url.PathEscape(vs) + "/real-servers/" + url.PathEscape(rs) + "/" + action
	if err := c.do(http.MethodPost, path, &out); err != nil {
		fmt.Fprintln(stderr, "pairlb server:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s %s: %s\n", out.VirtualService, out.RealServer, out.State)
	return 0
}
