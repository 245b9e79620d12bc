package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pairlb/pairlb/config"
)

// The two nodes of a pair must run the same file, the same version and see the same real
// servers up: after a failover the standby serves with its own view, and persistent clients stay
// on their servers only if both views agree. `pairlb pair check` compares them once; the
// pairWatcher compares them continuously for the metric pairlb_pair_peer_agrees.

const pairUsage = `usage:
  pairlb pair check [-c FILE] [--node NAME] [-peer-admin ADDR] [-timeout 3s]
      compare this node's pairlb with its peer's: configuration hash, version, and each real
      server's health and state; exit 1 on any difference or when either cannot be asked
`

// DefaultPairCheckInterval is how often the pair watcher asks the peer.
const DefaultPairCheckInterval = 15 * time.Second

func cmdPair(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, pairUsage)
		return 2
	}
	fs := flag.NewFlagSet("pair check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, pairUsage) }
	path := fs.String("c", defaultConfig, "configuration file")
	node := fs.String("node", "", "this node's name (default: the one owning an address of this box)")
	peerAdmin := fs.String("peer-admin", "", "the peer's admin API address:port (default: its pair.nodes[].admin)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for each answer")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pc, err := newPairChecker(cfg, *node, *peerAdmin)
	if err != nil {
		fmt.Fprintln(stderr, "pairlb pair check:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2**timeout)
	defer cancel()
	pc.client.Timeout = *timeout
	local, peer, diffs := pc.compare(ctx)
	// The file on disk may have changed since the daemon loaded it.
	if local.err == nil && local.Hash != "" && local.Hash != cfg.Hash {
		diffs = append(diffs, fmt.Sprintf("%s runs configuration %s, but %s on disk is %s (not reloaded?)", pc.self, short(local.Hash), cfg.Path, short(cfg.Hash)))
	}
	for _, v := range []nodeView{local, peer} {
		if v.err == nil {
			fmt.Fprintf(stdout, "%s (%s): version %s, configuration %s, %d real servers up of %d\n",
				v.node, v.addr, cmp.Or(v.Version, "unknown"), short(cmp.Or(v.Hash, "unknown")), v.up(), len(v.Servers))
		}
	}
	if len(diffs) == 0 {
		fmt.Fprintf(stdout, "pair %s/%s agrees\n", pc.self, pc.peer)
		return 0
	}
	for _, d := range diffs {
		fmt.Fprintln(stdout, "DIFFERENT:", d)
	}
	return 1
}

func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}

// pairChecker asks both nodes' admin APIs and compares what they say.
type pairChecker struct {
	self, peer          string // node names
	localAddr, peerAddr string // admin API host:port
	tokenFile           string
	client              *http.Client
}

func newPairChecker(cfg *config.Config, node, peerAdmin string) (*pairChecker, error) {
	name, err := pairNode(cfg, node)
	if err != nil {
		return nil, err
	}
	peer := cfg.Pair.Peer(name)
	if peerAdmin == "" {
		if !peer.Admin.IsValid() {
			return nil, fmt.Errorf("the pair gives no admin address for %s (pair.nodes[].admin): pass -peer-admin", peer.Name)
		}
		peerAdmin = peer.Admin.String()
	}
	local := cfg.Global.Admin
	if local.Addr().IsUnspecified() {
		lo := netip.IPv6Loopback()
		if local.Addr().Is4() {
			lo = netip.MustParseAddr("127.0.0.1")
		}
		local = netip.AddrPortFrom(lo, local.Port())
	}
	return &pairChecker{
		self: name, peer: peer.Name,
		localAddr: local.String(), peerAddr: peerAdmin,
		tokenFile: cfg.Global.AdminTokenFile,
		client:    &http.Client{Timeout: 3 * time.Second},
	}, nil
}

// nodeView is what one node's admin API says about itself.
type nodeView struct {
	node, addr string
	err        error
	Version    string
	Hash       string
	Ready      bool // configuration loaded and listeners up: it can take the VIPs
	// Servers maps "service/server" to "up" or "down", with the administrative state when it
	// is not enabled ("up,draining").
	Servers map[string]string
}

func (v nodeView) up() int {
	n := 0
	for _, s := range v.Servers {
		if strings.HasPrefix(s, "up") {
			n++
		}
	}
	return n
}

// statusDoc is the part of GET /api/v1/status (admin.go) that the comparison reads.
type statusDoc struct {
	Version         string `json:"version"`
	ConfigHash      string `json:"config_hash"`
	Ready           *bool  `json:"ready"`
	VirtualServices []struct {
		Name        string `json:"name"`
		RealServers []struct {
			Address string `json:"address"`
			State   string `json:"state"`
			Up      bool   `json:"up"`
		} `json:"real_servers"`
	} `json:"virtual_services"`
}

// view asks one node for its status.
func (pc *pairChecker) view(ctx context.Context, node, addr string) nodeView {
	v := nodeView{node: node, addr: addr, Servers: map[string]string{}}
	var doc statusDoc
	if err := pc.getJSON(ctx, addr, "/api/v1/status", &doc); err != nil {
		v.err = err
		return v
	}
	v.Version, v.Hash = doc.Version, doc.ConfigHash
	v.Ready = doc.Ready == nil || *doc.Ready
	for _, s := range doc.VirtualServices {
		for _, rs := range s.RealServers {
			h := "down"
			if rs.Up {
				h = "up"
			}
			if rs.State != "" && rs.State != "enabled" {
				h += "," + rs.State
			}
			v.Servers[s.Name+"/"+rs.Address] = h
		}
	}
	return v
}

func (pc *pairChecker) get(ctx context.Context, addr, path string) (*http.Response, error) {
	resp, err := adminRequest(ctx, pc.client, http.MethodGet, addr, path, pc.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("asking %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET http://%s%s: %s", addr, path, resp.Status)
	}
	return resp, nil
}

func (pc *pairChecker) getJSON(ctx context.Context, addr, path string, into any) error {
	resp, err := pc.get(ctx, addr, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(into); err != nil {
		return fmt.Errorf("reading http://%s%s: %w", addr, path, err)
	}
	return nil
}

// compare asks both nodes at once and lists every difference; a node that cannot be asked is
// one too.
func (pc *pairChecker) compare(ctx context.Context) (local, peer nodeView, diffs []string) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); local = pc.view(ctx, pc.self, pc.localAddr) }()
	go func() { defer wg.Done(); peer = pc.view(ctx, pc.peer, pc.peerAddr) }()
	wg.Wait()
	for _, v := range []nodeView{local, peer} {
		if v.err != nil {
			diffs = append(diffs, fmt.Sprintf("cannot ask %s at %s: %v", v.node, v.addr, v.err))
		}
	}
	if len(diffs) > 0 {
		return local, peer, diffs
	}
	for _, v := range []nodeView{local, peer} {
		if !v.Ready {
			diffs = append(diffs, fmt.Sprintf("%s is not ready: it could not take over", v.node))
		}
	}
	if local.Hash != peer.Hash {
		diffs = append(diffs, fmt.Sprintf("configuration: %s runs %s, %s runs %s", local.node, short(cmp.Or(local.Hash, "unknown")), peer.node, short(cmp.Or(peer.Hash, "unknown"))))
	}
	if local.Version != peer.Version {
		diffs = append(diffs, fmt.Sprintf("version: %s runs %s, %s runs %s", local.node, cmp.Or(local.Version, "unknown"), peer.node, cmp.Or(peer.Version, "unknown")))
	}
	keys := make([]string, 0, len(local.Servers))
	for k := range local.Servers {
		keys = append(keys, k)
	}
	for k := range peer.Servers {
		if _, ok := local.Servers[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		a, b := cmp.Or(local.Servers[k], "absent"), cmp.Or(peer.Servers[k], "absent")
		if a != b {
			diffs = append(diffs, fmt.Sprintf("real server %s: %s on %s, %s on %s", k, a, local.node, b, peer.node))
		}
	}
	return local, peer, diffs
}

// pairWatcher compares this node with its peer every interval and exports the result as
// pairlb_pair_peer_agrees (1: same configuration, version and health view) and
// pairlb_pair_peer_up (1: the peer's admin API answered).
type pairWatcher struct {
	log      *slog.Logger
	check    *pairChecker
	interval time.Duration

	agreesDesc, upDesc *prometheus.Desc

	mu     sync.Mutex
	agrees bool
	peerUp bool
	last   string // the differences last logged, to log each change once
}

// newPairWatcher returns the watcher for cfg's pair, or nil (logging why) when the file has no
// pair, this node cannot be found or the peer has no admin address. node may be empty: then
// the node owning one of this box's addresses. A nil watcher is safe to use: Run returns at
// once and it collects nothing.
func newPairWatcher(cfg *config.Config, node string, log *slog.Logger) *pairWatcher {
	if cfg == nil || cfg.Pair == nil {
		return nil
	}
	pc, err := newPairChecker(cfg, node, "")
	if err != nil {
		log.Warn("not watching the pair peer", "err", err)
		return nil
	}
	return &pairWatcher{
		log:      log.With("node", pc.self, "peer", pc.peer),
		check:    pc,
		interval: DefaultPairCheckInterval,
		agreesDesc: prometheus.NewDesc("pairlb_pair_peer_agrees",
			"1 when the pair peer runs the same configuration and version and sees the same real servers up, else 0.", nil, nil),
		upDesc: prometheus.NewDesc("pairlb_pair_peer_up",
			"1 when the pair peer's admin API answered the last check, else 0.", nil, nil),
	}
}

// Run compares the nodes every interval until ctx ends.
func (w *pairWatcher) Run(ctx context.Context) error {
	if w == nil {
		return nil
	}
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.once(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (w *pairWatcher) once(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, min(w.interval, 10*time.Second))
	defer cancel()
	_, peer, diffs := w.check.compare(ctx)
	if errors.Is(ctx.Err(), context.Canceled) {
		return
	}
	w.mu.Lock()
	w.agrees, w.peerUp = len(diffs) == 0, peer.err == nil
	changed := strings.Join(diffs, "\n") != w.last
	w.last = strings.Join(diffs, "\n")
	w.mu.Unlock()
	if !changed {
		return
	}
	if len(diffs) == 0 {
		w.log.Info("pair peer agrees")
		return
	}
	for _, d := range diffs {
		w.log.Warn("pair peer differs", "difference", d)
	}
}

// Describe implements prometheus.Collector.
func (w *pairWatcher) Describe(ch chan<- *prometheus.Desc) {
	if w == nil {
		return
	}
	ch <- w.agreesDesc
	ch <- w.upDesc
}

// Collect implements prometheus.Collector.
func (w *pairWatcher) Collect(ch chan<- prometheus.Metric) {
	if w == nil {
		return
	}
	w.mu.Lock()
	agrees, up := w.agrees, w.peerUp
	w.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(w.agreesDesc, prometheus.GaugeValue, boolGauge(agrees))
	ch <- prometheus.MustNewConstMetric(w.upDesc, prometheus.GaugeValue, boolGauge(up))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
