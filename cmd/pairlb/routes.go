package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/capability"
	"github.com/pairlb/pairlb/routing"
)

const routesUsage = `usage: pairlb routes [-c FILE] show|apply|flush

  show    print the kernel state FILE calls for (as ip and nft commands), what pairlb has
          installed now, and the difference ("+" to add, "-" to remove); the default
  apply   make the kernel hold that state, then exit (needs CAP_NET_ADMIN)
  flush   remove everything pairlb owns: its rules, routes, nftables table and the VIP
          addresses it added (needs CAP_NET_ADMIN; FILE is not read)

It works in the network namespace it runs in.
`

// cmdRoutes shows, applies or removes the routing state pairlb owns.
func cmdRoutes(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("routes", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, routesUsage) }
	path := fs.String("c", defaultConfig, "configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	action := "show"
	switch fs.NArg() {
	case 0:
	case 1:
		action = fs.Arg(0)
	default:
		fs.Usage()
		return 2
	}
	if action != "show" && action != "apply" && action != "flush" {
		fmt.Fprintf(stderr, "pairlb routes: unknown action %q\n\n%s", action, routesUsage)
		return 2
	}
	if action != "show" && !capability.NetAdmin() {
		fmt.Fprintf(stderr, "pairlb routes %s: needs CAP_NET_ADMIN; run as root or with that capability\n", action)
		return 1
	}

	// The namespace of the calling thread, for netlink and nftables alike. Entering it again
	// (setns) needs the privilege an unprivileged `show` lacks; its sockets are made in the
	// calling thread's namespace anyway.
	var opts []routing.Option
	if capability.NetAdmin() {
		ns, err := netns.Get()
		if err != nil {
			fmt.Fprintf(stderr, "pairlb routes: opening the network namespace: %v\n", err)
			return 1
		}
		defer ns.Close()
		opts = append(opts, routing.WithNamespace(ns))
	}
	h, err := netlink.NewHandle()
	if err != nil {
		fmt.Fprintf(stderr, "pairlb routes: opening netlink: %v\n", err)
		return 1
	}
	defer h.Close()
	m := routing.New(h, slog.New(slog.NewTextHandler(stderr, nil)), opts...)

	if action == "flush" {
		if err := m.Close(); err != nil {
			fmt.Fprintf(stderr, "pairlb routes flush: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, "removed everything pairlb owns")
		return 0
	}

	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	plan, err := m.Plan(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pairlb routes: %s: %v\n", *path, err)
		return 1
	}
	if action == "apply" {
		var partial *routing.PartialError
		if err := m.Set(cfg); errors.As(err, &partial) {
			fmt.Fprintf(stderr, "pairlb routes apply: applied the routing state of %s except:\n", *path)
			for _, p := range partial.Problems {
				fmt.Fprintf(stderr, "  %s\n", p)
			}
			for _, m := range plan.Missing {
				fmt.Fprintf(stderr, "  missing %s\n", m)
			}
			return 1
		} else if err != nil {
			fmt.Fprintf(stderr, "pairlb routes apply: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "applied the routing state of %s\n", *path)
		return 0
	}
	return showRoutes(m, *path, plan, stdout, stderr)
}

// showRoutes prints the plan, the installed state and their difference.
func showRoutes(m *routing.Manager, path string, plan routing.Plan, stdout, stderr io.Writer) int {
	var b strings.Builder
	writePlan(&b, path, plan)

	// Rules and routes can be dumped by anyone; nftables only with CAP_NET_ADMIN.
	have, err := m.State()
	nftHidden := false
	if errors.Is(err, unix.EPERM) {
		nftHidden = true
		have.Rules, have.Routes, err = m.Installed()
	}
	if err != nil {
		fmt.Fprint(stdout, b.String())
		fmt.Fprintf(stderr, "pairlb routes show: reading the installed state: %v\n", err)
		return 1
	}
	b.WriteString("\n# installed now (rules, routes, nftables; VIP addresses are neither listed nor compared)\n")
	writeLines(&b, have.Lines(), "# nothing")
	want := plan
	if nftHidden {
		b.WriteString("# nftables not readable without CAP_NET_ADMIN: left out of the difference\n")
		want.Transparency = nil
	}
	b.WriteString("\n# difference (+ to add, - to remove)\n")
	writeLines(&b, routing.Diff(want, have), "# none: the kernel matches the plan")
	fmt.Fprint(stdout, b.String())
	return 0
}

// writePlan prints the plan: its tables, its objects as commands, what of it the links cannot
// carry now and the interfaces the file names that the box lacks. A box being built, whose
// interfaces are not all there yet, gets the whole plan but for what waits for them.
func writePlan(b *strings.Builder, path string, plan routing.Plan) {
	fmt.Fprintf(b, "# planned for %s\n", path)
	for _, t := range plan.Tables {
		fmt.Fprintf(b, "# table %d: gateway %s dev %s, for %s\n", t.ID, t.Gateway, t.LinkName, strings.Join(t.Services, ", "))
	}
	// A gateway on no connected subnet has no table line above: it has no link to name.
	for _, p := range plan.Problems {
		if p.Kind == routing.UnitGateway && !slices.ContainsFunc(plan.Tables, func(t routing.Table) bool { return t.ID == p.Table }) {
			fmt.Fprintf(b, "# table %d: gateway %s, on no link yet (see below), for %s\n", p.Table, p.Addr, strings.Join(p.Services, ", "))
		}
	}
	if t := plan.Transparency; t != nil {
		fmt.Fprintf(b, "# table %d: replies to transparent sockets arriving on %s, for %s\n",
			routing.TransparentTable, strings.Join(t.Links, ", "), strings.Join(t.Services, ", "))
	}
	writeLines(b, plan.Lines(), "# nothing: no virtual service needs routing state")
	if len(plan.Problems) > 0 {
		b.WriteString("# cannot be installed now (what is above is installed without it):\n")
		for _, p := range plan.Problems {
			b.WriteString("#   " + p.String() + "\n")
		}
	}
	for _, m := range plan.Missing {
		b.WriteString("# missing " + m.String() + "\n")
	}
}

func writeLines(b *strings.Builder, lines []string, none string) {
	if len(lines) == 0 {
		lines = []string{none}
	}
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
}
