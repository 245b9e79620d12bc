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
	ready := st.ReadyText()
	hash := shortHash(st.ConfigHash)
	fmt.Fprintf(w, "pairlb %s, %s, config %s (%s)\n", st.Version, ready, st.ConfigFile, hash)
	writeConfigState(w, st)
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
		if line := serviceStateText(&vs.ServiceStatus); line != "" {
			fmt.Fprintf(w, "  %s\n", line)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  REAL SERVER\tSTATE\tHEALTH\tWEIGHT\tACTIVE\tTOTAL\tSINCE\tLAST CHECK")
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
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", rs.Address, stateText(&rs), hv, rs.Weight, rs.Active, rs.Total, sinceText(rs.Condition, rs.Since, now), last)
		}
		_ = tw.Flush()
	}
}

// serviceStateText is the line under a service that says its state and why: "up: 3 of 3 real
// servers in rotation available", "DEGRADED: ...", "DOWN: ..., new clients are refused". Empty
// from a daemon that does not say.
func serviceStateText(vs *lb.ServiceStatus) string {
	var head string
	switch vs.State {
	case lb.ServiceUp:
		head = "up"
	case lb.ServiceDegraded:
		head = "DEGRADED"
	case lb.ServiceDown:
		head = "DOWN"
	default:
		return ""
	}
	of := fmt.Sprintf("%d of %d", vs.Available, vs.InRotation)
	if vs.Available == 0 {
		of = fmt.Sprintf("none of %d", vs.InRotation)
	}
	servers := "real servers"
	if vs.InRotation == 1 {
		servers = "real server"
	}
	text := fmt.Sprintf("%s: %s %s in rotation available", head, of, servers)
	switch {
	case vs.Available == 0 && vs.SorryServer != "":
		text += ", the sorry server " + vs.SorryServer + " takes new clients"
	case vs.Available == 0 && vs.UnavailableRedirect != "":
		text += ", new clients are redirected to " + vs.UnavailableRedirect
	case vs.Available == 0:
		text += ", new clients are refused"
	}
	return text
}

// sinceText is how long a real server has been in its condition and since when, as the SINCE
// column shows it: "down for 2h13m, since 09:14:02" (the date too when it is not today's).
func sinceText(condition string, since, now time.Time) string {
	if condition == "" || since.IsZero() {
		return ""
	}
	return fmt.Sprintf("%s for %s, since %s", condition, shortDuration(now.Sub(since)), clockText(since, now))
}

// shortDuration is d to the two largest units, as an operator reads it: "45s", "12m5s",
// "2h13m", "3d4h".
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

// clockText is t in 24-hour ISO form in the local zone: the time alone when it is on now's
// date, else the date and time.
func clockText(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	if t.Format(time.DateOnly) == now.Format(time.DateOnly) {
		return t.Format(time.TimeOnly)
	}
	return t.Format(time.DateTime)
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

// shortHash is a configuration hash as the tables show it.
func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// writeConfigState says, as the status page's banner does, when the configuration in force is
// not the file an operator sees: the last reload failed, or the file changed since.
func writeConfigState(w io.Writer, st *Status) {
	r := st.LastReload
	failed := r != nil && r.Result == ReloadFailed
	if failed {
		fmt.Fprintf(w, "LAST RELOAD FAILED at %s: %s rejected, the running configuration (%s) stays:\n",
			r.Time.Format(time.DateTime), r.File, shortHash(r.ConfigHash))
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
	d := st.ConfigOnDisk
	switch {
	case d == nil:
	case d.State == OnDiskDiffers && !(failed && d.Hash == r.RejectedHash): // the rejected file: said above
		fmt.Fprintf(w, "RUNNING FILE DIFFERS FROM DISK: %s is %s now, the running configuration %s (pairlb reload applies it)\n",
			st.ConfigFile, shortHash(d.Hash), shortHash(st.ConfigHash))
	case d.State == OnDiskUnknown:
		fmt.Fprintf(w, "the file on disk cannot be compared with the running configuration: %s\n", d.Error)
	}
}

// WriteReload writes a reload's verdict as `pairlb reload` prints it: what became of the file,
// then one line per change, or one line per error as `pairlb validate` prints them.
func WriteReload(w io.Writer, r *Reload) {
	if r.Result != ReloadOK {
		fmt.Fprintf(w, "%s rejected; the running configuration (%s) stays:\n", r.File, shortHash(r.ConfigHash))
		for _, e := range r.Errors {
			fmt.Fprintln(w, e)
		}
		return
	}
	fmt.Fprintf(w, "%s applied (config %s, was %s)", r.File, shortHash(r.ConfigHash), shortHash(r.PreviousHash))
	switch len(r.Changes) {
	case 0:
		fmt.Fprintf(w, ": %s\n", r.Nothing())
		return
	case 1:
		fmt.Fprintln(w, ", 1 change:")
	default:
		fmt.Fprintf(w, ", %d changes:\n", len(r.Changes))
	}
	for _, c := range r.Changes {
		fmt.Fprintln(w, c.String())
	}
}
