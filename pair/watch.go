package pair

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pairlb/pairlb/config"
)

// DefaultCheckInterval is how often the Watcher asks the peer.
const DefaultCheckInterval = 15 * time.Second

// Watcher compares this node with its peer every interval and exports the result as
// pairlb_pair_peer_agrees (1: same configuration, version and health view) and
// pairlb_pair_peer_up (1: the peer's admin API answered). It follows the running
// configuration: the daemon calls Set at start and on every reload and re-apply. While the
// configuration has no pair to watch (none, this box is no node of it, or the peer has no
// admin address) it asks nothing and exports nothing.
type Watcher struct {
	log      *slog.Logger
	node     string // this box's node name; empty: the node owning one of its addresses
	interval time.Duration
	wake     chan struct{} // a new checker: ask now

	agreesDesc, upDesc *prometheus.Desc

	mu     sync.Mutex
	check  *Checker // nil: nothing to watch
	key    string   // what check was made from, to keep its state over a reload that keeps it
	agrees bool
	peerUp bool
	last   string // the differences last logged, to log each change once
}

// NewWatcher returns a watcher with nothing to watch until Set. node names this box's node;
// empty, the node owning one of the box's addresses.
func NewWatcher(log *slog.Logger, node string) *Watcher {
	return &Watcher{
		log:      log,
		node:     node,
		interval: DefaultCheckInterval,
		wake:     make(chan struct{}, 1),
		agreesDesc: prometheus.NewDesc("pairlb_pair_peer_agrees",
			"1 when the pair peer runs the same configuration and version and sees the same real servers up, else 0.", nil, nil),
		upDesc: prometheus.NewDesc("pairlb_pair_peer_up",
			"1 when the pair peer's admin API answered the last check, else 0.", nil, nil),
	}
}

// Set makes the watcher follow cfg: the nodes, the peer's address and the token it names. A
// change starts over (the gauges say 0 until the next check, which comes at once); an
// unchanged pair keeps its state and its schedule.
func (w *Watcher) Set(cfg *config.Config) {
	var chk *Checker
	var key string
	if cfg != nil && cfg.Pair != nil {
		var err error
		if chk, err = NewChecker(cfg, w.node, ""); err != nil {
			key = "error: " + err.Error()
		} else {
			key = fmt.Sprintf("%s %s %s %s %x", chk.Self, chk.Peer, chk.Local.Addr, chk.Remote.Addr, chk.Local.Token)
		}
		w.mu.Lock()
		changed := key != w.key
		w.mu.Unlock()
		if err != nil && changed {
			w.log.Warn("not watching the pair peer", "err", err)
		}
	}
	w.setChecker(chk, key)
}

// setChecker installs chk (nil: nothing to watch), made from what key says.
func (w *Watcher) setChecker(chk *Checker, key string) {
	w.mu.Lock()
	if key == w.key && (chk == nil) == (w.check == nil) {
		w.mu.Unlock()
		return
	}
	w.check, w.key = chk, key
	w.agrees, w.peerUp, w.last = false, false, ""
	w.mu.Unlock()
	if chk != nil {
		w.log.Info("watching the pair peer", "node", chk.Self, "peer", chk.Peer, "peer_admin", chk.Remote.Addr)
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Run compares the nodes every interval, and at once after Set changed them (also a Set before
// Run), until ctx ends. The first comparison is Set's: a timer that fired at Run's start as well
// would ask the peer twice for one configuration.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTimer(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-w.wake:
		}
		w.once(ctx)
		t.Reset(w.interval)
	}
}

// once compares the nodes now, if there is a pair to watch.
func (w *Watcher) once(ctx context.Context) {
	w.mu.Lock()
	chk := w.check
	w.mu.Unlock()
	if chk == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, min(w.interval, 10*time.Second))
	defer cancel()
	_, peer, diffs := chk.Compare(ctx)
	if errors.Is(ctx.Err(), context.Canceled) {
		return
	}
	w.mu.Lock()
	if w.check != chk { // Set replaced it meanwhile: this answer is of the old pair
		w.mu.Unlock()
		return
	}
	w.agrees, w.peerUp = len(diffs) == 0, peer.Err == nil
	changed := strings.Join(diffs, "\n") != w.last
	w.last = strings.Join(diffs, "\n")
	w.mu.Unlock()
	if !changed {
		return
	}
	log := w.log.With("node", chk.Self, "peer", chk.Peer)
	if len(diffs) == 0 {
		log.Info("pair peer agrees")
		return
	}
	for _, d := range diffs {
		log.Warn("pair peer differs", "difference", d)
	}
}

// Describe implements prometheus.Collector.
func (w *Watcher) Describe(ch chan<- *prometheus.Desc) {
	ch <- w.agreesDesc
	ch <- w.upDesc
}

// Collect implements prometheus.Collector: nothing while there is no pair to watch.
func (w *Watcher) Collect(ch chan<- prometheus.Metric) {
	w.mu.Lock()
	watching, agrees, up := w.check != nil, w.agrees, w.peerUp
	w.mu.Unlock()
	if !watching {
		return
	}
	ch <- prometheus.MustNewConstMetric(w.agreesDesc, prometheus.GaugeValue, boolGauge(agrees))
	ch <- prometheus.MustNewConstMetric(w.upDesc, prometheus.GaugeValue, boolGauge(up))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
