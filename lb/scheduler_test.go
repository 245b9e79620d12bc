package lb

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

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
		{"roundrobin skips down", &roundRobin{}, []int32{1, 1, 1}, nil, 1, []string{"1", "3", "3", "1", "3", "3"}},
		{"weighted roundrobin smooth", &weightedRoundRobin{}, []int32{5, 1, 1}, nil, -1, []string{"1", "1", "2", "1", "3", "1", "1"}},
		{"leastconn", leastConn{}, []int32{1, 1, 1}, []int64{3, 1, 2}, -1, []string{"2"}},
		{"leastconn skips down", leastConn{}, []int32{1, 1, 1}, []int64{3, 1, 2}, 1, []string{"3"}},
		{"weighted leastconn", leastConn{weighted: true}, []int32{4, 1, 1}, []int64{3, 1, 2}, -1, []string{"1"}},
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

func TestPersistTableBounded(t *testing.T) {
	tbl := newPersistTable(60e9, 100)
	now := time.Unix(1700000000, 0)
	for _, c := range clients(1000) {
		tbl.store(c, "s", now)
	}
	if n := tbl.len(); n != 100 {
		t.Fatalf("table holds %d entries, bound is 100", n)
	}
	c := clients(1)[0]
	tbl.store(c, "x", now)
	if s, ok := tbl.lookup(c, now.Add(59e9)); !ok || s != "x" {
		t.Fatalf("lookup before expiry: %q %v", s, ok)
	}
	if _, ok := tbl.lookup(c, now.Add(61e9)); ok {
		t.Fatal("entry found after its timeout")
	}
}
