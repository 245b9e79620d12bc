package health_test

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
)

// targets resolves a configuration into the flat list the Monitor probes: the health port when
// the service sets one, else the target port of the service's first port, and the source address
// forwarded connections use.
func targets(cfg *config.Config, source func(*config.VirtualService, config.RealServer) netip.Addr) []health.Target {
	var out []health.Target
	for i := range cfg.VirtualServices {
		vs := &cfg.VirtualServices[i]
		for _, rs := range vs.RealServers {
			if !rs.Enabled || len(vs.Ports) == 0 {
				continue
			}
			addr := rs.AddrPort(vs.Ports[0].Target)
			if vs.Health.Port != 0 {
				addr = netip.AddrPortFrom(rs.Address, vs.Health.Port)
			}
			out = append(out, health.Target{Service: vs.Name, Server: rs.Key(), Addr: addr,
				Source: source(vs, rs), Check: vs.Health})
		}
	}
	return out
}

func ExampleMonitor() {
	var cfg config.Config // loaded by config.Load in cmd/pairlb
	m := health.NewMonitor(health.Options{
		Logger: slog.Default(),
		OnChange: func(c health.Change) {
			// e.g. balancer.SetHealthy(c.Service, c.Server, c.Up)
		},
	})
	m.Set(targets(&cfg, func(*config.VirtualService, config.RealServer) netip.Addr { return netip.Addr{} }))
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // in cmd/pairlb: the process's lifetime
	_ = m.Run(ctx)
	// On reload: m.Set(targets(newCfg, ...)) while Run runs.
}
