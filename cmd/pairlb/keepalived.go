package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/syslog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pairlb/pairlb/config"
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
      (keepalived's notify script) log the transition; on MASTER ask pairlb to re-apply routing
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
	binary := fs.String("binary", "", "absolute path of pairlb on the node (default: "+config.DefaultBinary+")")
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
	name, err := pairNode(cfg, *node)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb keepalived:", err)
		return 1
	}
	conf, err := config.RenderKeepalivedWith(cfg, name, config.KeepalivedOptions{Binary: *binary})
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

// pairNode is the node named, or when name is empty the node that owns one of this box's
// addresses.
func pairNode(cfg *config.Config, name string) (string, error) {
	if cfg.Pair == nil {
		return "", fmt.Errorf("%s has no pair section", cfg.Path)
	}
	if name != "" {
		if cfg.Pair.Node(name) == nil {
			return "", fmt.Errorf("no node %q in the pair of %s (want one of %s)", name, cfg.Path, strings.Join(cfg.Pair.NodeNames(), ", "))
		}
		return name, nil
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("listing this box's addresses: %w", err)
	}
	var local []netip.Addr
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			local = append(local, p.Addr())
		}
	}
	if n := cfg.Pair.NodeOwning(local); n != nil {
		return n.Name, nil
	}
	return "", fmt.Errorf("this box holds no address of exactly one pair node (%s): name it with --node", strings.Join(cfg.Pair.NodeNames(), ", "))
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

// adminRequest sends one request to a pairlb admin API, with the bearer token when there is one.
func adminRequest(ctx context.Context, client *http.Client, method, addr, path, tokenFile string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	if tokenFile != "" {
		tok, err := config.ReadAdminToken(tokenFile)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+string(tok))
	}
	return client.Do(req)
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
	resp, err := adminRequest(ctx, http.DefaultClient, http.MethodGet, *af.admin, "/readyz", *af.tokenFile)
	if err != nil {
		fmt.Fprintf(stderr, "pairlb keepalived check: not ready: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "pairlb keepalived check: not ready: %s/readyz answered %s\n", *af.admin, resp.Status)
		return 1
	}
	return 0
}

// cmdKeepalivedNotify is keepalived's notify script. keepalived appends the kind (GROUP or
// INSTANCE), the name, the new state and for an instance its priority. The transition goes to
// syslog (keepalived discards a script's output) and to standard error; on MASTER the local
// pairlb is asked to reload, which re-applies the routing of the VIPs that just arrived. It
// always exits 0: keepalived ignores the status, and a failed reload is logged by pairlb.
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
	resp, err := adminRequest(ctx, http.DefaultClient, http.MethodPost, *af.admin, "/api/v1/reload", *af.tokenFile)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			err = errors.New(resp.Status)
		}
	}
	if err != nil {
		logNotify(stderr, "FAULT", fmt.Sprintf("pair transition: asking pairlb at %s to re-apply routing: %v", *af.admin, err))
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
