package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// StatusCheck is `pairlb status` of the lab's own binary, run in the box after the traffic: the
// table an operator would see, and what its --json answer says about the mapped configuration.
type StatusCheck struct {
	Admin    string   // the admin address asked (global.admin)
	Table    string   // the output of `pairlb status`
	Services int      // virtual services of the configuration found in the answer
	Servers  int      // enabled real servers of non-redirect services found enabled and up
	Ports    int      // ports the lab sent to with a non-zero connection counter
	Problems []string // what the answer got wrong, or why there is none
}

// OK reports whether the status was read and matched the configuration.
func (s *StatusCheck) OK() bool { return s != nil && len(s.Problems) == 0 }

// status runs `pairlb status` in the box twice, as a table to show and with --json to check.
func (r *run) status(ctx context.Context, cfgPath string) *StatusCheck {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sc := &StatusCheck{Admin: r.cfg.Global.Admin.String()}
	// -c as well as -admin: the token, if the file sets one, comes from it.
	args := []string{"status", "-admin", sc.Admin, "-c", cfgPath}
	out, err := r.ns[nsBox].Run(ctx, r.o.Binary, args...)
	sc.Table = string(out)
	if err == nil {
		out, err = r.ns[nsBox].Run(ctx, r.o.Binary, append(args, "--json")...)
	}
	if err != nil {
		sc.Problems = []string{err.Error()}
		return sc
	}
	sc.check(r.cfg, r.plan.Rows, out)
	return sc
}

// check compares a --json answer with the configuration: every virtual service listed, every
// enabled real server of a non-redirect service enabled and up, and a non-zero connection
// counter on every port a row sent requests to.
func (sc *StatusCheck) check(cfg *config.Config, rows []*Row, data []byte) {
	var st admin.Status
	if err := json.Unmarshal(data, &st); err != nil {
		sc.Problems = append(sc.Problems, fmt.Sprintf("decoding `pairlb status --json`: %v", err))
		return
	}
	fail := func(format string, args ...any) { sc.Problems = append(sc.Problems, fmt.Sprintf(format, args...)) }
	if !st.Ready {
		fail("pairlb says it is not ready")
	}
	find := func(name string) int {
		return slices.IndexFunc(st.VirtualServices, func(v admin.VirtualService) bool { return v.Name == name })
	}
	for _, vs := range cfg.VirtualServices {
		i := find(vs.Name)
		if i < 0 {
			fail("%s: not listed", vs.Name)
			continue
		}
		sc.Services++
		if vs.Redirect != "" {
			continue
		}
		got := st.VirtualServices[i].RealServers
		for _, rs := range vs.RealServers {
			if !rs.Enabled {
				continue
			}
			j := slices.IndexFunc(got, func(g admin.RealServer) bool { return g.Address == rs.Key() })
			switch {
			case j < 0:
				fail("%s: real server %s not listed", vs.Name, rs.Key())
			case got[j].State != "enabled":
				fail("%s: real server %s is %s, want enabled", vs.Name, rs.Key(), got[j].State)
			case !got[j].Up || got[j].Health == nil || !got[j].Health.Up:
				fail("%s: real server %s health is not up", vs.Name, rs.Key())
			default:
				sc.Servers++
			}
		}
	}
	for _, row := range rows {
		i := find(row.Service)
		if row.Sent == 0 || i < 0 {
			continue
		}
		ports := st.VirtualServices[i].Ports
		j := slices.IndexFunc(ports, func(p lb.PortStatus) bool {
			return p.Listen == row.Port.Listen && p.Proto == string(row.Port.Proto)
		})
		switch {
		case j < 0:
			fail("%s: port %d/%s not listed", row.Service, row.Port.Listen, row.Port.Proto)
		case ports[j].Accepted == 0:
			fail("%s: port %d/%s counts no connections after %d requests", row.Service, row.Port.Listen, row.Port.Proto, row.Sent)
		default:
			sc.Ports++
		}
	}
}
