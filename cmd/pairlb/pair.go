package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/pair"
)

const pairUsage = `usage:
  pairlb pair check [-c FILE] [--node NAME] [-peer-admin ADDR] [-timeout 3s]
      compare this node's pairlb with its peer's: configuration hash, version, and each real
      server's health and state; exit 1 on any difference or when either cannot be asked
`

// cmdPair is `pairlb pair check`: pair.Checker once, its report on stdout.
func cmdPair(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, pairUsage)
		return 2
	}
	fs := flag.NewFlagSet("pair check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, pairUsage) }
	path := fs.String("c", defaultConfig, "configuration file")
	node := fs.String("node", "", "this node's name (default: the one owning an address of this box)")
	peerAdmin := fs.String("peer-admin", "", "the peer's admin API address:port (default: its pair.nodes[].admin)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for each answer")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pc, err := pair.NewChecker(cfg, *node, *peerAdmin)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb pair check:", err)
		return 2
	}
	pc.SetTimeout(*timeout)
	ctx, cancel := context.WithTimeout(context.Background(), 2**timeout)
	defer cancel()
	rep := pc.Check(ctx, cfg)
	rep.Write(stdout)
	if !rep.Agrees() {
		return 1
	}
	return 0
}
