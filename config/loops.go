package config

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// A service whose real server (or sorry server) is a listener of the same file forwards into
// pairlb again. That is allowed as a chain (an outer service in front of an inner one), but a
// chain that comes back to where it started turns one connection into as many as the box has
// descriptors: one connection became 4,085 in a test. loops finds every such cycle.

// listenerKey is one listening socket of the file.
type listenerKey struct {
	addr  netip.AddrPort
	proto Proto
}

// dial is one edge of the forwarding graph: a service dialling another's listener.
type dial struct {
	to   int // index of the service listening there
	at   spot
	addr listenerKey
}

func (p *parser) loops(cfg *Config, where []placed) {
	listeners := map[listenerKey]int{}
	vips := map[netip.Addr]bool{}
	for i := range cfg.VirtualServices {
		vs := &cfg.VirtualServices[i]
		if where[i].vip == nil {
			continue
		}
		vips[vs.VIP] = true
		for _, pt := range vs.Ports {
			k := listenerKey{netip.AddrPortFrom(vs.VIP, pt.Listen), pt.Proto}
			if _, ok := listeners[k]; !ok { // a second owner is reported by across
				listeners[k] = i
			}
		}
	}
	// The edges, from what each service really dials: every real server and the sorry server
	// on every port's target port, in that port's protocol. A redirector dials nothing.
	edges := make([][]dial, len(cfg.VirtualServices))
	for i := range cfg.VirtualServices {
		vs, at := &cfg.VirtualServices[i], where[i]
		if vs.Redirect != "" {
			continue
		}
		seen := map[int]bool{}
		add := func(a netip.AddrPort, proto Proto, s spot) {
			k := listenerKey{a, proto}
			if to, ok := listeners[k]; ok && !seen[to] {
				seen[to] = true
				edges[i] = append(edges[i], dial{to: to, at: s, addr: k})
			}
		}
		for j, rs := range vs.RealServers {
			if !vips[rs.Address] {
				continue
			}
			for _, pt := range vs.Ports {
				add(rs.AddrPort(pt.Target), pt.Proto, at.servers[j])
			}
		}
		if vs.HasSorryServer() && vips[vs.SorryServer.Addr()] {
			for _, pt := range vs.Ports {
				add(vs.SorryAddrPort(pt), pt.Proto, spot{at.sorry, index("virtual_services", i) + ".sorry_server"})
			}
		}
	}
	for _, comp := range stronglyConnected(edges) {
		p.reportLoop(cfg, edges, comp)
	}
}

// reportLoop reports one cycle through the strongly connected set comp (sorted), starting at
// its first service in the file, on the line of the server that starts the cycle.
func (p *parser) reportLoop(cfg *Config, edges [][]dial, comp []int) {
	start := comp[0]
	in := map[int]bool{}
	for _, c := range comp {
		in[c] = true
	}
	// Breadth first from start back to start, inside comp: the shortest cycle through it.
	type step struct {
		from int
		e    dial
	}
	parent := map[int]step{}
	closing := -1 // the service whose edge leads back to start
	var back dial
	for queue := []int{start}; len(queue) > 0 && closing < 0; queue = queue[1:] {
		u := queue[0]
		for _, e := range edges[u] {
			if e.to == start {
				closing, back = u, e
				break
			}
			if _, seen := parent[e.to]; in[e.to] && !seen {
				parent[e.to] = step{u, e}
				queue = append(queue, e.to)
			}
		}
	}
	if closing < 0 {
		return // cannot happen for a strongly connected set
	}
	path := []int{closing}
	for path[len(path)-1] != start {
		path = append(path, parent[path[len(path)-1]].from)
	}
	slices.Reverse(path)
	path = append(path, start)
	first := back // a service that dials itself
	if len(path) > 2 {
		first = parent[path[1]].e
	}
	names := make([]string, len(path))
	for i, n := range path {
		names[i] = cmp.Or(cfg.VirtualServices[n].Name, index("virtual_services", n))
	}
	p.fail(first.at.node, first.at.path, first.at.node.Value,
		"forwarding loop: %s (%s/%s is a listener of %s: every connection would come back to pairlb until its descriptors run out)",
		strings.Join(names, " -> "), first.addr.addr, first.addr.proto, names[1])
}

// stronglyConnected returns the sets of services that reach each other (each sorted, in the
// order of their first service), counting a service that dials itself; Tarjan's algorithm,
// linear in services and edges.
func stronglyConnected(edges [][]dial) [][]int {
	n := len(edges)
	idx := make([]int, n)
	low := make([]int, n)
	onStack := make([]bool, n)
	for i := range idx {
		idx[i] = -1
	}
	var out [][]int
	var st []int
	counter := 0
	type frame struct{ v, e int }
	for root := range n {
		if idx[root] >= 0 {
			continue
		}
		// Iterative, so that a long chain of services cannot exhaust the stack.
		frames := []frame{{root, 0}}
		idx[root], low[root] = counter, counter
		counter++
		st = append(st, root)
		onStack[root] = true
		for len(frames) > 0 {
			f := &frames[len(frames)-1]
			if f.e < len(edges[f.v]) {
				w := edges[f.v][f.e].to
				f.e++
				switch {
				case idx[w] < 0:
					idx[w], low[w] = counter, counter
					counter++
					st = append(st, w)
					onStack[w] = true
					frames = append(frames, frame{w, 0})
				case onStack[w]:
					low[f.v] = min(low[f.v], idx[w])
				}
				continue
			}
			v := f.v
			frames = frames[:len(frames)-1]
			if len(frames) > 0 {
				u := frames[len(frames)-1].v
				low[u] = min(low[u], low[v])
			}
			if low[v] != idx[v] {
				continue
			}
			var comp []int
			for {
				w := st[len(st)-1]
				st = st[:len(st)-1]
				onStack[w] = false
				comp = append(comp, w)
				if w == v {
					break
				}
			}
			if len(comp) > 1 || selfLoop(edges[v], v) {
				slices.Sort(comp)
				out = append(out, comp)
			}
		}
	}
	slices.SortFunc(out, func(a, b []int) int { return cmp.Compare(a[0], b[0]) })
	return out
}

func selfLoop(es []dial, v int) bool {
	return slices.ContainsFunc(es, func(e dial) bool { return e.to == v })
}
