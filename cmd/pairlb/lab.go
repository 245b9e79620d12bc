package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/pairlb/pairlb/internal/lab"
)

const labUsage = `usage: pairlb lab [--keep] [--requests N]
       pairlb lab --clean

Builds the deployment guide's single-pair topology (internal, DMZ and external networks, each
with a stateful router) in network namespaces, runs pairlb in it with the Lync 2013 example
mapped onto 198.18.0.0/15, 198.51.100.0/24 and 203.0.113.0/24, sends traffic to every virtual
service port and prints one row per port: answers, reply path (router counters), real servers.
Exits 0 only when every row passes and pairlb status in the box matches the configuration.
Needs root, iproute2 and nftables.

`

// cmdLab is `pairlb lab`: the whole lab, or --clean to remove kept ones.
func cmdLab(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, labUsage); fs.PrintDefaults() }
	keep := fs.Bool("keep", false, "leave the lab running for exploring (remove it with --clean)")
	clean := fs.Bool("clean", false, "remove labs left by --keep or by a killed run, then exit")
	requests := fs.Int("requests", 2, "requests per client address and port")
	stateDir := fs.String("state-dir", lab.DefaultStateDir, "where labs are recorded")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if *clean {
		if err := lab.Clean(*stateDir, stdout); err != nil {
			fmt.Fprintln(stderr, "pairlb lab --clean:", err)
			return 1
		}
		return 0
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "pairlb lab: finding the pairlb binary:", err)
		return 1
	}
	// Ctrl-C or SIGTERM ends the run; Run removes what it made before returning.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := lab.Run(ctx, lab.Options{Binary: self, Keep: *keep, StateDir: *stateDir, Requests: *requests, Progress: stderr})
	if rep != nil && len(rep.Rows) > 0 && rep.Rows[0].Sent > 0 {
		fmt.Fprintln(stdout)
		lab.Print(stdout, rep)
		if rep.Kept {
			lab.PrintKept(stdout, rep, self)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "pairlb lab: interrupted; everything the lab made has been removed unless an error follows")
		}
		fmt.Fprintln(stderr, "pairlb lab:", err)
		return 1
	}
	if !rep.Pass() {
		return 1
	}
	return 0
}

// cmdLabAgent is the hidden `pairlb lab-agent`: the lab's real servers and clients, run inside
// its namespaces.
func cmdLabAgent(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return lab.Agent(ctx, args, stdout, stderr)
}
