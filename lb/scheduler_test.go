package lb

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func pool(weights ...int32) []*realServer {
	var rs []*realServer
	for i, w := range weights {
		key := fmt.Sprintf("198.18.1.%d", i+1)
		r := &realServer{key: key, seed: hashString(key)}
		r.weight.Store(w)
		r.up.Store(true)
		rs = append(rs, r)
	}
	return rs
}

func picks(s scheduler, servers []*realServer, n int) []string {
	var out []string
	for range n {
		r := s.pick(servers, netip.Addr{})
		if r == nil {
			out = append(out, "-")
			continue
		}
		out = append(out, r.key[len("198.18.1."):])
	}
	return out
}

func TestSchedulers(t *testing.T) {
	tests := []struct {
		name    string
		sched   scheduler
		weights []int32
		active  []int64
		down    int // index of a server marked down, or -1
		want    []string
	}{
		{"roundrobin", &roundRobin{}, []int32{1, 1, 1}, nil, -1, []string{"1", "2", "3", "1", "2", "3"}},
		// The two servers left share equally: server 3 does not also take the down server's turns.
		{"roundrobin skips down", &roundRobin{}, []int32{1, 1, 1}, nil, 1, []string{"1", "3", "1", "3", "1", "3"}},
		{"weighted roundrobin smooth", &weightedRoundRobin{}, []int32{5, 1, 1}, nil, -1, []string{"1", "1", "2", "1", "3", "1", "1"}},
		{"leastconn", &leastConn{picks: new(atomic.Uint64)}, []int32{1, 1, 1}, []int64{3, 1, 2}, -1, []string{"2"}},
		{"leastconn skips down", &leastConn{picks: new(atomic.Uint64)}, []int32{1, 1, 1}, []int64{3, 1, 2}, 1, []string{"3"}},
		{"weighted leastconn", &leastConn{weighted: true, picks: new(atomic.Uint64)}, []int32{4, 1, 1}, []int64{3, 1, 2}, -1, []string{"1"}},
		{"all down", &roundRobin{}, []int32{1}, nil, 0, []string{"-"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servers := pool(tt.weights...)
			for i, a := range tt.active {
				servers[i].active.Store(a)
			}
			if tt.down >= 0 {
				servers[tt.down].up.Store(false)
			}
			if diff := cmp.Diff(tt.want, picks(tt.sched, servers, len(tt.want))); diff != "" {
				t.Errorf("picks (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLeastConnTiesRotate: connections that come one at a time, each closed before the next, find
// every server with nothing open. They must spread over the servers rather than all go to the
// first one.
func TestLeastConnTiesRotate(t *testing.T) {
	for _, weighted := range []bool{false, true} {
		for _, n := range []int{2, 3} {
			t.Run(fmt.Sprintf("weighted=%v/%d servers", weighted, n), func(t *testing.T) {
				weights := make([]int32, n)
				for i := range weights {
					weights[i] = 2
				}
				servers := pool(weights...)
				s := &leastConn{weighted: weighted, picks: new(atomic.Uint64)}
				count := map[*realServer]int{}
				const conns = 3000
				var prev *realServer
				for i := range conns {
					r := s.pick(servers, netip.Addr{})
					r.active.Add(1)
					count[r]++
					// Each connection is closed before the next one comes, but every other
					// one is released only after the next pick, as when the balancer has not
					// yet seen the end its client already saw.
					if prev != nil {
						prev.active.Add(-1)
						prev = nil
					}
					if i%2 == 0 {
						r.active.Add(-1)
					} else {
						prev = r
					}
				}
				for _, r := range servers {
					if got, want := count[r], conns/n; got < want-2 || got > want+2 {
						t.Errorf("server %s took %d of %d sequential connections, want %d±2", r.key, got, conns, want)
					}
				}
			})
		}
	}
}

// TestLeastConnStillPrefersTheLeastLoaded: rotation only breaks ties.
func TestLeastConnStillPrefersTheLeastLoaded(t *testing.T) {
	servers := pool(1, 1, 1)
	servers[0].active.Store(2)
	servers[2].active.Store(2)
	s := &leastConn{picks: new(atomic.Uint64)}
	for i := range 10 {
		if r := s.pick(servers, netip.Addr{}); r != servers[1] {
			t.Fatalf("pick %d: %s, want the only server with fewer connections", i, r.key)
		}
	}
}

// TestRoundRobinEvenWithAServerDown: with one of four servers down, each of the other three
// takes a third, whatever the position of the down one.
func TestRoundRobinEvenWithAServerDown(t *testing.T) {
	for down := range 4 {
		servers := pool(1, 1, 1, 1)
		servers[down].up.Store(false)
		s := &roundRobin{}
		count := map[*realServer]int{}
		for range 300 {
			count[s.pick(servers, netip.Addr{})]++
		}
		for i, r := range servers {
			want := 100
			if i == down {
				want = 0
			}
			if count[r] != want {
				t.Errorf("server %d down: server %d took %d of 300, want %d", down, i, count[r], want)
			}
		}
	}
}

func clients(n int) []netip.Addr {
	var out []netip.Addr
	for i := range n {
		out = append(out, netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}))
	}
	return out
}

func TestSourceHashMovesOnlyTheRemovedServersClients(t *testing.T) {
	servers := pool(1, 1, 1, 1, 1)
	before := map[netip.Addr]*realServer{}
	count := map[*realServer]int{}
	for _, c := range clients(20000) {
		r := sourceHash{}.pick(servers, c)
		before[c] = r
		count[r]++
	}
	for _, r := range servers {
		if count[r] < 3000 || count[r] > 5000 {
			t.Errorf("server %s got %d of 20000 clients, want about 4000", r.key, count[r])
		}
	}
	removed := servers[2]
	removed.up.Store(false)
	for c, was := range before {
		now := sourceHash{}.pick(servers, c)
		if was != removed && now != was {
			t.Fatalf("client %s moved from %s to %s although only %s went away", c, was.key, now.key, removed.key)
		}
		if was == removed && now == removed {
			t.Fatalf("client %s still on the removed server", c)
		}
	}
	// Coming back takes back exactly its own clients.
	removed.up.Store(true)
	for c, was := range before {
		if now := (sourceHash{}).pick(servers, c); now != was {
			t.Fatalf("client %s on %s after the server returned, was on %s", c, now.key, was.key)
		}
	}
}

func TestSourceHashHonoursWeights(t *testing.T) {
	servers := pool(3, 1)
	n := map[*realServer]int{}
	for _, c := range clients(20000) {
		n[sourceHash{}.pick(servers, c)]++
	}
	if share := float64(n[servers[0]]) / 20000; share < 0.70 || share > 0.80 {
		t.Fatalf("weight 3 of 4 got a share of %.2f, want about 0.75", share)
	}
}
