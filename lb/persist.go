package lb

import (
	"net/netip"
	"sync"
	"time"
)

// persistTable remembers which real server each client address was sent to, for a lifetime that
// every new connection of the client renews. It is bounded: when full it first sweeps expired
// entries, then forgets an arbitrary one, so a flood of source addresses cannot grow it.
type persistTable struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[netip.Addr]persistEntry
}

type persistEntry struct {
	server  string // realServer.key: survives a reload that rebuilds the pool
	expires int64  // unix nanoseconds
}

func newPersistTable(ttl time.Duration, max int) *persistTable {
	return &persistTable{ttl: ttl, max: max, entries: make(map[netip.Addr]persistEntry)}
}

// lookup returns the server key remembered for client, if any and not expired.
func (t *persistTable) lookup(client netip.Addr, now time.Time) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[client]
	if !ok {
		return "", false
	}
	if e.expires <= now.UnixNano() {
		delete(t.entries, client)
		return "", false
	}
	return e.server, true
}

// store remembers (or renews) client's server.
func (t *persistTable) store(client netip.Addr, server string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.entries[client]; !ok && len(t.entries) >= t.max {
		t.sweepLocked(now)
		for k := range t.entries {
			if len(t.entries) < t.max {
				break
			}
			delete(t.entries, k)
		}
	}
	t.entries[client] = persistEntry{server: server, expires: now.Add(t.ttl).UnixNano()}
}

func (t *persistTable) sweepLocked(now time.Time) {
	n := now.UnixNano()
	for k, e := range t.entries {
		if e.expires <= n {
			delete(t.entries, k)
		}
	}
}

// sweep drops expired entries; the owning service calls it periodically.
func (t *persistTable) sweep(now time.Time) {
	t.mu.Lock()
	t.sweepLocked(now)
	t.mu.Unlock()
}

func (t *persistTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}
