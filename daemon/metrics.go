package daemon

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/internal/buildinfo"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/routing"
)

// metrics are the metrics the daemon keeps itself: health probes, reloads and the
// configuration in force. The balancer's own come from lb.NewCollector at scrape time, the
// routing plan's from routingCollector and the pair's from pair.Watcher.
type metrics struct {
	healthDuration *prometheus.HistogramVec
	healthFailures *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	reloadOK       prometheus.Gauge
	reloadTime     prometheus.Gauge
	configHash     *prometheus.GaugeVec

	mu      sync.Mutex
	targets map[[2]string]bool // health series present: {service, server}
}

// newMetrics registers every metric of the daemon on reg: the balancer's, the daemon's, and
// the Go runtime, process and build information collectors. version is pairlb's.
func newMetrics(reg prometheus.Registerer, b *lb.Balancer, version string, build buildinfo.Info) *metrics {
	rs := []string{"virtual_service", "real_server"}
	m := &metrics{
		healthDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pairlb_health_check_duration_seconds",
			Help:    "Time a health check of a real server took, passed or failed.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, rs),
		healthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pairlb_health_check_failures_total",
			Help: "Health checks of a real server that failed.",
		}, rs),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pairlb_config_reloads_total",
			Help: "Configuration reloads (SIGHUP or the admin API), by result (success, failure).",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pairlb_config_last_reload_successful",
			Help: "1 when the last reload was applied, 0 when it was rejected and the previous configuration stays.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pairlb_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded, in seconds since the epoch.",
		}),
		configHash: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pairlb_config_hash",
			Help: "Always 1; the hash label is the SHA-256 of the configuration file in force.",
		}, []string{"hash"}),
		targets: map[[2]string]bool{},
	}
	if build.Version == "" {
		build.Version = version
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pairlb_build_info",
		Help: "Always 1; the labels are pairlb's version, and the VCS revision and commit time the go command stamped into the binary (empty when it has none).",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "vcs_time": build.Time,
			"vcs_modified": strconv.FormatBool(build.Modified)},
	})
	buildInfo.Set(1)
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	reg.MustRegister(
		lb.NewCollector(b),
		m.healthDuration, m.healthFailures, m.reloads, m.reloadOK, m.reloadTime, m.configHash, buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	return m
}

// observeProbe is the health monitor's OnProbe.
func (m *metrics) observeProbe(t health.Target, d time.Duration, err error) {
	m.mu.Lock()
	m.targets[[2]string{t.Service, t.Server}] = true
	m.mu.Unlock()
	m.healthDuration.WithLabelValues(t.Service, t.Server).Observe(d.Seconds())
	failures := m.healthFailures.WithLabelValues(t.Service, t.Server) // a zero series from the first probe on
	if err != nil {
		failures.Inc()
	}
}

// setTargets deletes the health series of targets no longer monitored. Call it after
// health.Monitor.Set has returned: no probe of a removed target reports after that.
func (m *metrics) setTargets(targets []health.Target) {
	keep := make(map[[2]string]bool, len(targets))
	for _, t := range targets {
		keep[[2]string{t.Service, t.Server}] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.targets {
		if !keep[k] {
			m.healthDuration.DeleteLabelValues(k[0], k[1])
			m.healthFailures.DeleteLabelValues(k[0], k[1])
			delete(m.targets, k)
		}
	}
}

// loaded records the configuration now in force.
func (m *metrics) loaded(cfg *config.Config) {
	m.configHash.Reset()
	m.configHash.WithLabelValues(cfg.Hash).Set(1)
	m.reloadOK.Set(1)
	m.reloadTime.SetToCurrentTime()
}

// reloaded counts a reload and, when it succeeded, records the new configuration.
func (m *metrics) reloaded(cfg *config.Config, err error) {
	if err != nil {
		m.reloads.WithLabelValues("failure").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.loaded(cfg)
}

// routingCollector reads, at scrape time, whether each part of the routing plan is installed:
// pairlb_routing_unit_ok{kind, address, family} is 1 for a unit installed in full and 0 for one
// with a problem. The units come from the file (a gateway, a managed VIP, transparency per
// family), so the labels are bounded.
type routingCollector struct {
	m  *routing.Manager
	ok *prometheus.Desc
}

func newRoutingCollector(m *routing.Manager) *routingCollector {
	return &routingCollector{m: m, ok: prometheus.NewDesc("pairlb_routing_unit_ok",
		"1 when this part of the routing plan is installed, 0 while it is not (see the routing section of /api/v1/status); address is the gateway or the VIP.",
		[]string{"kind", "address", "family"}, nil)}
}

func (c *routingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.ok }

func (c *routingCollector) Collect(ch chan<- prometheus.Metric) {
	failing := map[routing.UnitID]bool{}
	for _, p := range c.m.Problems() {
		failing[p.UnitID] = true
	}
	emit := func(id routing.UnitID, v float64) {
		addr := ""
		if id.Addr.IsValid() {
			addr = id.Addr.String()
		}
		ch <- prometheus.MustNewConstMetric(c.ok, prometheus.GaugeValue, v, string(id.Kind), addr, string(id.Family))
	}
	for _, u := range c.m.Units() {
		v := 1.0
		if failing[u.UnitID] {
			v = 0
		}
		delete(failing, u.UnitID)
		emit(u.UnitID, v)
	}
	for id := range failing { // removals that failed belong to no unit of the plan
		emit(id, 0)
	}
}
