package daemon

import (
	"net/netip"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/lb"
)

// healthTargets turns every real server of cfg's forwarding services (a redirector has none)
// into what the monitor probes, enabled or not, so that the status shows whether a disabled
// server could take traffic again. A probe goes to the health port when the service sets one,
// else to the target port of the service's first port. It leaves from an address forwarded
// connections leave from: the first of source_addresses (connections take them in turn), or
// with subnet_originating the box's own address on the server's subnet as subnetSource has it
// now (a later link change does not move a probe's source; the next reload or re-apply does).
func healthTargets(cfg *config.Config, subnetSource lb.SourceFunc) []health.Target {
	var out []health.Target
	for i := range cfg.VirtualServices {
		vs := &cfg.VirtualServices[i]
		if vs.Redirect != "" || len(vs.Ports) == 0 {
			continue
		}
		for _, rs := range vs.RealServers {
			addr := rs.AddrPort(vs.Ports[0].Target)
			if vs.Health.Port != 0 {
				addr = netip.AddrPortFrom(rs.Address, vs.Health.Port)
			}
			var src netip.Addr
			switch {
			case len(vs.SourceAddresses) > 0:
				src = vs.SourceAddresses[0]
			case vs.SubnetOriginating:
				src, _ = subnetSource(rs.Address)
			}
			out = append(out, health.Target{Service: vs.Name, Server: rs.Key(), Addr: addr, Source: src, Check: vs.Health})
		}
	}
	return out
}
