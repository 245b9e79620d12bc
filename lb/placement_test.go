package lb

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// TestLeastConnSpreadsSequentialConnections: a lightly loaded leastconn service, where each
// connection ends before the next begins, spreads its connections evenly instead of sending
// nearly all of them to the first server.
func TestLeastConnSpreadsSequentialConnections(t *testing.T) {
	for _, sched := range []config.Scheduler{config.LeastConn, config.WeightedLeastConn} {
		for _, n := range []int{2, 3} {
			t.Run(fmt.Sprintf("%s/%d servers", sched, n), func(t *testing.T) {
				var addrs []netip.AddrPort
				for i := range n {
					addrs = append(addrs, startBackend(t, fmt.Sprint(i)).addr())
				}
				vs := testService(t, "lc", addrs...)
				vs.Scheduler = sched
				bal, _ := startBalancer(t, testConfig(vs))
				st := bal.services["lc"].stats
				count := map[string]int{}
				const conns = 60
				for range conns {
					server, _ := exchange(t, vipAddr(vs, 0), "x")
					count[server]++
					// The client has seen the end; wait until the balancer has too, so that
					// every pick finds all servers with nothing open.
					waitFor(t, "the connection released", func() bool { return st.active.Load() == 0 })
				}
				for i := range n {
					if got, want := count[fmt.Sprint(i)], conns/n; got < want-2 || got > want+2 {
						t.Errorf("server %d took %d of %d sequential connections, want %d±2 (all: %v)", i, got, conns, want, count)
					}
				}
			})
		}
	}
}

// TestPlaceByScheduler: with place_by scheduler a new client of a persistent service is placed
// by the scheduler (here round robin, which a hash of one address cannot imitate) and then kept
// on its server by the table; with the default (hash) the same clients go where the hash says.
func TestPlaceByScheduler(t *testing.T) {
	a, b2 := startBackend(t, "a"), startBackend(t, "b")
	srcs := make([]netip.Addr, 8)
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{127, 0, 3, byte(10 + i)})
	}
	for _, placeBy := range []config.PlaceBy{"", config.PlaceByHash, config.PlaceByScheduler} {
		t.Run("place_by="+string(placeBy), func(t *testing.T) {
			vs := testService(t, "persist", a.addr(), b2.addr())
			vs.Scheduler = config.RoundRobin
			vs.Persistence = config.Persistence{Type: "source-ip", Timeout: time.Minute, MaxEntries: 100, PlaceBy: placeBy}
			bal, _ := startBalancer(t, testConfig(vs))
			svc := bal.services["persist"]
			first := map[netip.Addr]string{}
			for _, src := range srcs {
				first[src] = dialFrom(t, src, vipAddr(vs, 0))
			}
			for _, src := range srcs {
				want := first[src]
				if placeBy == config.PlaceByScheduler {
					continue // checked below: round robin alternates
				}
				if h := rendezvous(svc.servers, src); h.key != addrKey(a, b2, want) {
					t.Errorf("client %s went to %s; the hash places it on %s", src, want, h.key)
				}
			}
			if placeBy == config.PlaceByScheduler {
				for i, src := range srcs {
					if want := []string{"a", "b"}[i%2]; first[src] != want {
						t.Errorf("new client %d (%s) went to %s; round robin sends it to %s", i, src, first[src], want)
					}
				}
			}
			// Kept by the table whatever placed it.
			for round := range 2 {
				for _, src := range srcs {
					if got := dialFrom(t, src, vipAddr(vs, 0)); got != first[src] {
						t.Fatalf("round %d: client %s went to %s, first to %s", round, src, got, first[src])
					}
				}
			}
		})
	}
}

// addrKey maps a backend's name back to its real-server key.
func addrKey(a, b *backend, name string) string {
	if name == a.name {
		return a.addr().String()
	}
	return b.addr().String()
}
