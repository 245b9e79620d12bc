package lab

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
)

// maxErrors is how many distinct problems a row keeps.
const maxErrors = 3

// judge checks one result against its row: the answer must come from a real server of the
// service, on the target port, having seen the box (or, for a transparent service, the client
// itself) as its peer; a redirector must answer 302 with the template filled in.
func judge(row *Row, client string, res Result, box []netip.Addr) {
	row.Sent++
	fail := func(format string, args ...any) {
		row.Errors = append(row.Errors, fmt.Sprintf("%s (%s): ", client, res.Source)+fmt.Sprintf(format, args...))
	}
	if res.Err != "" {
		fail("%s", res.Err)
		return
	}
	if row.Kind == KindRedirect {
		want := strings.NewReplacer("%h", res.Host, "%s", res.Path).Replace(row.Redirect)
		if res.Location != want {
			fail("Location %q, want %q", res.Location, want)
			return
		}
		row.Answered++
		row.addServer(res.Source, netip.Addr{})
		return
	}
	srv, err := netip.ParseAddr(res.Hello.Server)
	i := slices.IndexFunc(row.Pool, func(ap netip.AddrPort) bool { return ap.Addr() == srv })
	if err != nil || i < 0 {
		fail("answered by %q, not a real server of the service", res.Hello.Server)
		return
	}
	if want := row.Pool[i].String(); res.Hello.Local != want {
		fail("reached %s, want %s", res.Hello.Local, want)
		return
	}
	peer, err := netip.ParseAddrPort(res.Hello.Peer)
	if err != nil {
		fail("server reports peer %q", res.Hello.Peer)
		return
	}
	if row.Transparent {
		if src, _ := netip.ParseAddr(res.Source); peer.Addr() != src {
			fail("server saw %s; a transparent service must show it the client's own address %s", peer.Addr(), res.Source)
			return
		}
	} else if !slices.Contains(box, peer.Addr()) {
		fail("server saw %s; want the box's own address", peer.Addr())
		return
	}
	row.Answered++
	row.addServer(res.Source, srv)
}

func (r *Row) addServer(source string, srv netip.Addr) {
	if r.seen == nil {
		r.seen = map[string][]netip.Addr{}
	}
	if !slices.Contains(r.seen[source], srv) {
		r.seen[source] = append(r.seen[source], srv)
	}
}

// finishRow sums up a row's results: the servers used, persistence, the distinct problems.
func finishRow(r *Row) {
	var all []netip.Addr
	for source, srvs := range r.seen {
		all = append(all, srvs...)
		if r.Persistent && len(srvs) > 1 {
			slices.SortFunc(srvs, netip.Addr.Compare)
			r.Errors = append(r.Errors, fmt.Sprintf("persistence broken: %s went to %v", source, srvs))
		}
	}
	slices.SortFunc(all, netip.Addr.Compare)
	all = slices.Compact(all)
	r.Servers = nil
	for _, a := range all {
		if a.IsValid() {
			r.Servers = append(r.Servers, a.String())
		} else {
			r.Servers = append(r.Servers, "(pairlb redirector)")
		}
	}
	// Distinct problems, in the order first seen, a few of them.
	var errs []string
	for _, e := range r.Errors {
		if !slices.Contains(errs, e) {
			errs = append(errs, e)
		}
	}
	if len(errs) > maxErrors {
		errs = append(errs[:maxErrors], fmt.Sprintf("and %d more", len(errs)-maxErrors))
	}
	r.Errors = errs
}

// PathCheck is what the counters say about the replies of one listener.
type PathCheck struct {
	OK        bool
	Gateway   string   // the router the replies must pass: the VIP's gateway
	Forwarded uint64   // packets from the listener the gateway forwarded
	Received  uint64   // packets from the listener the clients received
	Leaks     []string // other ways replies took
}

func (p PathCheck) String() string {
	if p.OK {
		return fmt.Sprintf("yes: %d/%d via %s", p.Received, p.Forwarded, p.Gateway)
	}
	if len(p.Leaks) == 0 {
		return fmt.Sprintf("NO: %d received, %d via %s", p.Received, p.Forwarded, p.Gateway)
	}
	return fmt.Sprintf("NO: %d via %s; %s", p.Forwarded, p.Gateway, strings.Join(p.Leaks, "; "))
}

// pathCheck decides a row's reply path from the routers' forwarded counts and the clients'
// received counts: every reply packet a client received must have passed the VIP's gateway
// (received <= forwarded, read in that order), no other router may have forwarded any, and none
// may have reached a client straight from the box.
func pathCheck(row *Row, forwarded, received map[string]map[string]uint64) PathCheck {
	key := row.Key()
	pc := PathCheck{Gateway: segmentOf(row.Network).router}
	pc.Forwarded = forwarded[pc.Gateway][prefixFrom+key]
	for _, router := range sortedKeys(forwarded) {
		if n := forwarded[router][prefixFrom+key]; router != pc.Gateway && n > 0 {
			pc.Leaks = append(pc.Leaks, fmt.Sprintf("%d via %s", n, router))
		}
	}
	for _, client := range sortedKeys(received) {
		pc.Received += received[client][prefixRecv+key]
		if n := received[client][prefixDirect+key]; n > 0 {
			pc.Leaks = append(pc.Leaks, fmt.Sprintf("%d straight from the box to %s", n, client))
		}
	}
	if pc.Received > pc.Forwarded && len(pc.Leaks) == 0 {
		pc.Leaks = append(pc.Leaks, fmt.Sprintf("clients received %d, more than %s forwarded", pc.Received, pc.Gateway))
	}
	pc.OK = pc.Forwarded > 0 && pc.Received > 0 && len(pc.Leaks) == 0
	return pc
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Print writes the report's table, the problems of failing rows and a summary.
func Print(w io.Writer, rep *Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVIP\tPORT\tPROTO\tCHECK\tANSWERED\tREPLY PATH (pkts recv/fwd)\tREAL SERVERS USED\tRESULT")
	passed := 0
	for _, r := range rep.Rows {
		port := fmt.Sprint(r.Port.Listen)
		if r.Target != 0 && r.Target != r.Port.Listen {
			port += fmt.Sprintf("->%d", r.Target)
		}
		check := string(r.Kind)
		if r.Transparent {
			check += ",transp"
		}
		result := "FAIL"
		if r.Pass() {
			result = "pass"
			passed++
		}
		servers := strings.Join(r.Servers, " ")
		if servers == "" {
			servers = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", r.Service, r.VIP, port, r.Port.Proto, check,
			r.Answered, r.Sent, r.Path, servers, result)
	}
	tw.Flush()
	var problems []string
	for _, r := range rep.Rows {
		for _, e := range r.Errors {
			problems = append(problems, fmt.Sprintf("  %s %s/%d: %s", r.Service, r.Port.Proto, r.Port.Listen, e))
		}
	}
	if len(problems) > 0 {
		fmt.Fprintln(w, "\nproblems:")
		fmt.Fprintln(w, strings.Join(problems, "\n"))
	}
	status := "not run"
	if sc := rep.Status; sc != nil {
		fmt.Fprintf(w, "\npairlb status on the box (-admin %s):\n", sc.Admin)
		for line := range strings.Lines(strings.TrimRight(sc.Table, "\n") + "\n") {
			if line != "\n" {
				line = "  " + line
			}
			fmt.Fprint(w, line)
		}
		status = "pass"
		if !sc.OK() {
			status = "FAIL"
		}
		fmt.Fprintf(w, "\nstatus check (--json): %s: %d virtual services listed, %d real servers enabled and up, connections counted on %d ports\n",
			status, sc.Services, sc.Servers, sc.Ports)
		for _, p := range sc.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%d/%d rows pass, pairlb status check: %s", passed, len(rep.Rows), status)
	var inv []string
	for _, router := range sortedKeys(rep.Invalid) {
		inv = append(inv, fmt.Sprintf("%s %d", router, rep.Invalid[router]))
	}
	if len(inv) > 0 {
		fmt.Fprintf(w, "; invalid packets dropped by the routers' firewalls: %s", strings.Join(inv, ", "))
	}
	fmt.Fprintln(w)
	if len(rep.HealthDown) > 0 {
		fmt.Fprintf(w, "health targets not up when traffic started: %s\n", strings.Join(rep.HealthDown, ", "))
	}
	if rep.PairlbExit != "" {
		fmt.Fprintf(w, "pairlb after SIGTERM: %s\n", rep.PairlbExit)
	}
	if rep.Elapsed > 0 {
		fmt.Fprintf(w, "lab %s: %.1fs\n", strings.TrimSuffix(rep.Prefix, "-"), rep.Elapsed.Seconds())
	}
}

// PrintKept tells how to explore a kept lab and how to remove it.
func PrintKept(w io.Writer, rep *Report, self string) {
	fmt.Fprintf(w, "\nThe lab is still running (namespaces %s*). Enter it:\n", rep.Prefix)
	for _, c := range rep.Clients {
		fmt.Fprintf(w, "  sudo ip netns exec %s bash    # %s, %s\n", c.Namespace, c.Addr, c.Desc)
	}
	fmt.Fprintf(w, "  sudo ip netns exec %sbox bash    # the box running pairlb\n", rep.Prefix)
	fmt.Fprintf(w, "  sudo ip netns exec %sr-int nft list table inet %s    # a router's counters\n", rep.Prefix, nftTable)
	fmt.Fprintf(w, "Every namespace: ip netns list | grep %s\n", rep.Prefix)
	fmt.Fprintf(w, "Configuration and logs: %s/ (pairlb.yaml, pairlb.log, one log per real server)\n", rep.Dir)
	if strings.Contains(self, "go-build") {
		// `go run` removes its binary when it exits: the running processes keep theirs, but a
		// probe needs a pairlb that stays.
		self = "/tmp/pairlb"
		fmt.Fprintf(w, "A request from a client (build pairlb first: go build -o %s ./cmd/pairlb), e.g.:\n", self)
	} else {
		fmt.Fprintf(w, "A request from a client, e.g.:\n")
	}
	fmt.Fprintf(w, "  sudo ip netns exec %scli-ext %s lab-agent probe -kind tls -target %s -source %s\n",
		rep.Prefix, self, exampleTarget(rep), clientAddr(rep, "cli-ext"))
	fmt.Fprintf(w, "Remove it later: sudo pairlb lab --clean   (or: sudo ./scripts/lab.sh --clean)\n")
}

func exampleTarget(rep *Report) string {
	for _, r := range rep.Rows {
		if r.Network == "external" && r.Kind == KindTLS {
			return netip.AddrPortFrom(r.VIP, r.Port.Listen).String()
		}
	}
	return "203.0.113.10:443"
}

func clientAddr(rep *Report, name string) netip.Addr {
	for _, c := range rep.Clients {
		if strings.HasSuffix(c.Namespace, "-"+name) {
			return c.Addr
		}
	}
	return netip.Addr{}
}
