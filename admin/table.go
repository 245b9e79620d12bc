package admin

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// WriteTable writes st as `pairlb status` shows it: a header line, the routing problems, and a
// table per virtual service. now is the time ages are measured from.
func WriteTable(w io.Writer, st *Status, now time.Time) {
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
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%s\n", rs.Address, stateText(&rs), hv, rs.Weight, rs.Active, rs.Total, last)
		}
		_ = tw.Flush()
	}
}

// stateText is a real server's state as the table shows it: "drained" for a draining server
// with nothing left open (safe to stop), apart from one still "draining" (ACTIVE says how much).
func stateText(rs *RealServer) string {
	if rs.Drained {
		return "drained"
	}
	return rs.State
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
