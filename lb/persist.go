package lb

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// persistTable remembers which real server each client address was sent to, for a lifetime that
// every new connection of the client renews. It is bounded, and every operation costs O(1)
// whatever its size: the entries form a list from the least recently renewed to the most, and
// since every entry lives for the same ttl, that is also the order in which they expire. A new
// client in a full table takes the place of the oldest entry (the one that would expire first),
// so a flood of source addresses costs one eviction per new address, never a walk of the table;
// the periodic sweep expires entries from the old end and stops at the first live one.
//
// Its memory is one slot of a map from a 16-byte address to a 32-bit index and one 40-byte
// entry per client, with no pointer in either, so the garbage collector never scans them (about
// 84 bytes per entry at 1M entries, measured by BenchmarkPersistTableMemory).
type persistTable struct {
	mu    sync.Mutex
	ttl   int64 // nanoseconds
	max   int
	epoch time.Time // times are kept as nanoseconds since epoch, on the monotonic clock

	index   map[[16]byte]int32 // client address (IPv4 mapped) to its entry
	entries []persistEntry     // grows up to max; a freed slot goes on the free list
	free    int32              // first free slot, -1 for none; linked through next
	head    int32              // least recently renewed, -1 when empty
	tail    int32              // most recently renewed

	// Server keys are interned: an entry holds a small index, and a name is forgotten when no
	// entry refers to it any more, so reloads that rename servers cannot grow the table.
	names     []string
	nameRefs  []int32
	nameIndex map[string]uint32
	freeNames []uint32

	evictions *atomic.Uint64 // entries forgotten to make room, not by expiry: the service's counter
	size      atomic.Int64   // len(index), for the metrics without the lock
	examined  uint64         // entries looked at besides the client's own: the work the bound is about
}

type persistEntry struct {
	addr       [16]byte
	expires    int64 // nanoseconds since the table's epoch
	prev, next int32 // towards head (older), towards tail (younger); -1 at the ends
	server     uint32
}

// sweepBudget bounds the entries one sweep call expires, so that the lock is never held for
// long (a few milliseconds at most); the caller calls again while a call used all of it.
const sweepBudget = 16384

// newPersistTable returns an empty table; evictions counts its evictions (the service's counter,
// which outlives a table a reload replaces).
func newPersistTable(ttl time.Duration, max int, evictions *atomic.Uint64) *persistTable {
	return &persistTable{
		ttl: int64(ttl), max: max, epoch: time.Now(), evictions: evictions,
		index: map[[16]byte]int32{}, nameIndex: map[string]uint32{},
		free: -1, head: -1, tail: -1,
	}
}

func (t *persistTable) clock(now time.Time) int64 { return int64(now.Sub(t.epoch)) }

// lookup returns the server key remembered for client, if any and not expired.
func (t *persistTable) lookup(client netip.Addr, now time.Time) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.index[client.As16()]
	if !ok {
		return "", false
	}
	e := &t.entries[i]
	if e.expires <= t.clock(now) {
		t.remove(i)
		return "", false
	}
	return t.names[e.server], true
}

// store remembers (or renews) client's server. A new client in a full table replaces the
// oldest entry.
func (t *persistTable) store(client netip.Addr, server string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := client.As16()
	expires := t.clock(now) + t.ttl
	if i, ok := t.index[key]; ok {
		e := &t.entries[i]
		if t.names[e.server] != server {
			t.unrefName(e.server)
			e.server = t.refName(server)
		}
		e.expires = expires
		t.unlink(i)
		t.append(i)
		return
	}
	if len(t.index) >= t.max && t.head >= 0 {
		t.examined++
		if t.entries[t.head].expires > t.clock(now) {
			t.evictions.Add(1)
		}
		t.remove(t.head)
	}
	var i int32
	if t.free >= 0 {
		i = t.free
		t.free = t.entries[i].next
	} else {
		t.entries = append(t.entries, persistEntry{})
		i = int32(len(t.entries) - 1)
	}
	t.entries[i] = persistEntry{addr: key, expires: expires, server: t.refName(server)}
	t.append(i)
	t.index[key] = i
	t.size.Store(int64(len(t.index)))
}

// sweep expires entries from the old end until the first live one, at most sweepBudget of
// them; it reports how many it expired. The owning balancer calls it periodically.
func (t *persistTable) sweep(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, clock := 0, t.clock(now)
	for t.head >= 0 && n < sweepBudget {
		t.examined++
		if t.entries[t.head].expires > clock {
			break
		}
		t.remove(t.head)
		n++
	}
	return n
}

func (t *persistTable) len() int { return int(t.size.Load()) }

// remove forgets entry i and frees its slot.
func (t *persistTable) remove(i int32) {
	e := &t.entries[i]
	delete(t.index, e.addr)
	t.unrefName(e.server)
	t.unlink(i)
	e.next, t.free = t.free, i
	t.size.Store(int64(len(t.index)))
}

// append puts entry i at the young end.
func (t *persistTable) append(i int32) {
	e := &t.entries[i]
	e.prev, e.next = t.tail, -1
	if t.tail >= 0 {
		t.entries[t.tail].next = i
	} else {
		t.head = i
	}
	t.tail = i
}

// unlink takes entry i out of the list.
func (t *persistTable) unlink(i int32) {
	e := &t.entries[i]
	if e.prev >= 0 {
		t.entries[e.prev].next = e.next
	} else {
		t.head = e.next
	}
	if e.next >= 0 {
		t.entries[e.next].prev = e.prev
	} else {
		t.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (t *persistTable) refName(name string) uint32 {
	if n, ok := t.nameIndex[name]; ok {
		t.nameRefs[n]++
		return n
	}
	var n uint32
	if k := len(t.freeNames); k > 0 {
		n, t.freeNames = t.freeNames[k-1], t.freeNames[:k-1]
		t.names[n], t.nameRefs[n] = name, 1
	} else {
		n = uint32(len(t.names))
		t.names, t.nameRefs = append(t.names, name), append(t.nameRefs, 1)
	}
	t.nameIndex[name] = n
	return n
}

func (t *persistTable) unrefName(n uint32) {
	if t.nameRefs[n]--; t.nameRefs[n] == 0 {
		delete(t.nameIndex, t.names[n])
		t.names[n] = ""
		t.freeNames = append(t.freeNames, n)
	}
}

// order returns the clients from the old end to the young end, for tests.
func (t *persistTable) order() []netip.Addr {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []netip.Addr
	for i := t.head; i >= 0; i = t.entries[i].next {
		out = append(out, netip.AddrFrom16(t.entries[i].addr).Unmap())
	}
	return out
}
