package lb

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestPersistTableBounded(t *testing.T) {
	tbl := newPersistTable(60e9, 100, new(atomic.Uint64))
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

// TestPersistTableEvictsOldest: a new client in a full table takes the place of the entry
// renewed longest ago, and a renewal makes an entry the youngest.
func TestPersistTableEvictsOldest(t *testing.T) {
	tbl := newPersistTable(time.Hour, 64, new(atomic.Uint64))
	now := time.Unix(1700000000, 0)
	at := func(s int) time.Time { return now.Add(time.Duration(s) * time.Second) }
	cs := clients(80)
	for i, c := range cs[:64] {
		tbl.store(c, fmt.Sprint("s", i), at(i))
	}
	// Clients 0-15 come back: renewed, they are now the youngest, and 16-31 the oldest.
	for i, c := range cs[:16] {
		tbl.store(c, fmt.Sprint("s", i), at(100+i))
	}
	for i, c := range cs[64:] { // 16 new clients
		tbl.store(c, fmt.Sprint("s", 64+i), at(200+i))
	}
	var gone []int
	for i, c := range cs {
		s, ok := tbl.lookup(c, at(300))
		if !ok {
			gone = append(gone, i)
		} else if s != fmt.Sprint("s", i) {
			t.Errorf("client %d: %q, want s%d", i, s, i)
		}
	}
	want := []int{16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}
	if diff := cmp.Diff(want, gone); diff != "" {
		t.Errorf("clients evicted by 16 insertions into the full table (-want +got):\n%s", diff)
	}
	if n := tbl.len(); n != 64 {
		t.Errorf("%d entries, bound 64", n)
	}
}

// TestPersistTableFullInsertIsO1: inserting into a full table looks at one entry besides the
// new one, whatever the table's size; every such insertion counts an eviction; a renewal
// reorders the list; the sweep stops at the first live entry.
func TestPersistTableFullInsertIsO1(t *testing.T) {
	const size = 100_000
	tbl := newPersistTable(time.Minute, size, new(atomic.Uint64))
	now := time.Unix(1700000000, 0)
	all := make([]netip.Addr, size+1000)
	for i := range all {
		all[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	for _, c := range all[:size] {
		tbl.store(c, "a", now)
	}
	if tbl.examined != 0 {
		t.Fatalf("filling the table examined %d other entries", tbl.examined)
	}
	for i, c := range all[size:] {
		tbl.store(c, "b", now.Add(time.Second))
		if tbl.examined != uint64(i+1) {
			t.Fatalf("insertion %d into the full table examined %d entries in all, want %d", i, tbl.examined, i+1)
		}
	}
	if got := tbl.evictions.Load(); got != 1000 {
		t.Errorf("%d evictions, want 1000", got)
	}
	if got := tbl.len(); got != size {
		t.Errorf("%d entries, want %d", got, size)
	}
	// The oldest 1000 went; the next oldest is now the head.
	if _, ok := tbl.lookup(all[999], now); ok {
		t.Error("client 999 survived the evictions")
	}
	if order := tbl.order(); order[0] != all[1000] || order[len(order)-1] != all[len(all)-1] {
		t.Errorf("list runs from %s to %s, want %s to %s", order[0], order[len(order)-1], all[1000], all[len(all)-1])
	}
	// Expiry is not eviction: entries past their time make room without counting.
	later := now.Add(time.Minute + time.Millisecond) // the first "a" entries have expired
	before := tbl.evictions.Load()
	tbl.store(netip.MustParseAddr("198.18.0.1"), "c", later)
	if tbl.evictions.Load() != before {
		t.Error("an expired entry making room was counted as an eviction")
	}

	// The sweep expires from the old end and stops at the first live entry.
	tbl.examined = 0
	n := tbl.sweep(later)
	if want := size - 1000 - 1; n != min(want, sweepBudget) {
		t.Fatalf("sweep expired %d, want %d", n, min(want, sweepBudget))
	}
	for tbl.sweep(later) > 0 {
	}
	if got := tbl.len(); got != 1001 {
		t.Errorf("%d entries after sweeping, want the 1001 live ones", got)
	}
	tbl.examined = 0
	if n := tbl.sweep(later); n != 0 || tbl.examined != 1 {
		t.Errorf("a sweep with nothing expired expired %d and looked at %d entries, want 0 and 1", n, tbl.examined)
	}
}

func TestPersistTableRenewalMovesToYoungEnd(t *testing.T) {
	tbl := newPersistTable(time.Minute, 10, new(atomic.Uint64))
	now := time.Unix(1700000000, 0)
	cs := clients(3)
	for _, c := range cs {
		tbl.store(c, "a", now)
	}
	tbl.store(cs[0], "b", now.Add(time.Second)) // renewed, and moved to another server
	if diff := cmp.Diff([]netip.Addr{cs[1], cs[2], cs[0]}, tbl.order(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("order after renewing the oldest (-want +got):\n%s", diff)
	}
	if s, _ := tbl.lookup(cs[0], now.Add(time.Second)); s != "b" {
		t.Errorf("renewed entry points at %q, want b", s)
	}
	// Only the server names in use are kept.
	tbl.store(cs[0], "c", now.Add(2*time.Second))
	if _, ok := tbl.nameIndex["b"]; ok || len(tbl.nameIndex) != 2 {
		t.Errorf("server names kept: %v, want a and c", tbl.nameIndex)
	}
	// Renewal keeps the entry alive past its first expiry.
	if _, ok := tbl.lookup(cs[0], now.Add(time.Minute+time.Second)); !ok {
		t.Error("renewed entry expired at its first deadline")
	}
}

func TestPersistTableNoAllocations(t *testing.T) {
	tbl := newPersistTable(time.Minute, 1000, new(atomic.Uint64))
	now := time.Unix(1700000000, 0)
	cs := clients(2000)
	for _, c := range cs {
		tbl.store(c, "a", now) // full, and every slot used once
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		tbl.store(cs[i%len(cs)], "a", now) // renewals and insertions into the full table
		tbl.lookup(cs[(i+7)%len(cs)], now)
		i++
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per store and lookup", allocs)
	}
}

// BenchmarkPersistTableMemory fills a table of the default bound and reports its heap bytes per
// entry.
func BenchmarkPersistTableMemory(b *testing.B) {
	const size = 1 << 20
	cs := make([]netip.Addr, size)
	for i := range cs {
		cs[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	now := time.Now()
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tbl := newPersistTable(time.Minute, size, new(atomic.Uint64))
		for _, c := range cs {
			tbl.store(c, "198.18.1.1:443", now)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/size, "bytes/entry")
		runtime.KeepAlive(tbl)
	}
}
