package health_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
)

// ExampleMonitor runs a Monitor over one target and prints its first state change. In
// cmd/pairlb, the targets come from the configuration (one per enabled real server and service)
// and OnChange becomes a call on the balancer; Set is called again on every reload while Run
// runs.
func ExampleMonitor() {
	changes := make(chan health.Change, 1)
	m := health.NewMonitor(health.Options{
		OnChange: func(c health.Change) { changes <- c },
	})
	m.Set([]health.Target{{
		Service: "fe-web",
		Server:  "198.18.1.11",
		Addr:    netip.MustParseAddrPort("198.18.1.11:5061"),
		Check:   config.Health{Type: config.HealthNone}, // no probe is sent
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	c := <-changes
	fmt.Printf("%s %s up=%v: %s\n", c.Service, c.Server, c.Up, c.Reason)
	cancel()
	<-done
	// Output: fe-web 198.18.1.11 up=true: initial state: no health check
}
