package lb

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the balancer's counters. It reads Status() when scraped, so forwarding pays
// nothing for metrics, and the series of a service or real server that a reload removed are gone
// from the next scrape without any bookkeeping.
type collector struct {
	b *Balancer

	connections       *prometheus.Desc
	active            *prometheus.Desc
	serviceState      *prometheus.Desc
	serverConnections *prometheus.Desc
	serverActive      *prometheus.Desc
	serverDialRetries *prometheus.Desc
	serverUp          *prometheus.Desc
	serverState       *prometheus.Desc
	serverWeight      *prometheus.Desc
	bytes             *prometheus.Desc
	dropped           *prometheus.Desc
	udpSessions       *prometheus.Desc
	udpMoves          *prometheus.Desc
	persistEntries    *prometheus.Desc
	persistMax        *prometheus.Desc
	persistEvictions  *prometheus.Desc
	connLogLines      *prometheus.Desc
	connLogDropped    *prometheus.Desc
}

// NewCollector returns a collector of b's per-service and per-real-server metrics, to register
// on a registry the caller owns. Labels are the virtual service's name, the real server's key,
// the listening port and fixed enumerations; never a client address.
//
// Bytes are counted as they are read from the sender: a TCP connection's with each read
// (tcpConn.fill), before they are written on, so that a reader never sees bytes reach a peer
// before they are counted; UDP datagrams with each batch, once it has been handed to sendmmsg (a
// datagram the kernel refused is counted as dropped, and its bytes stay counted). So the
// counters of a connection open for hours move all along.
func NewCollector(b *Balancer) prometheus.Collector {
	vs := []string{"virtual_service"}
	rs := []string{"virtual_service", "real_server"}
	return &collector{
		b: b,
		connections: prometheus.NewDesc("pairlb_connections_total",
			"Connections accepted and UDP sessions created, by virtual service and listening port.",
			[]string{"virtual_service", "port", "proto"}, nil),
		active: prometheus.NewDesc("pairlb_active_connections",
			"Open TCP connections and UDP sessions of a virtual service.", vs, nil),
		serviceState: prometheus.NewDesc("pairlb_virtual_service_state",
			"State of a virtual service: 1 for its current state, 0 for the others. up: every real server in rotation (enabled, weight above 0) is available; degraded: some are, or none is and the sorry server stands in; down: none is and there is no sorry server.",
			[]string{"virtual_service", "state"}, nil),
		serverConnections: prometheus.NewDesc("pairlb_real_server_connections_total",
			"Connections and UDP sessions sent to a real server.", rs, nil),
		serverActive: prometheus.NewDesc("pairlb_real_server_active_connections",
			"Open connections and UDP sessions on a real server.", rs, nil),
		serverDialRetries: prometheus.NewDesc("pairlb_real_server_dial_retries_total",
			"Dials to a real server that failed and were retried on another real server or the sorry server.", rs, nil),
		serverUp: prometheus.NewDesc("pairlb_real_server_up",
			"1 when the health check says the real server is up, 0 when it is down.", rs, nil),
		serverState: prometheus.NewDesc("pairlb_real_server_state",
			"Administrative state of a real server: 1 for its current state (enabled, disabled, draining), 0 for the others.",
			[]string{"virtual_service", "real_server", "state"}, nil),
		serverWeight: prometheus.NewDesc("pairlb_real_server_weight",
			"Scheduling weight of a real server.", rs, nil),
		bytes: prometheus.NewDesc("pairlb_bytes_total",
			"Bytes forwarded, by direction (client_to_server, server_to_client).",
			[]string{"virtual_service", "direction"}, nil),
		dropped: prometheus.NewDesc("pairlb_dropped_total",
			"Connections and datagrams not forwarded, by reason.",
			[]string{"virtual_service", "reason"}, nil),
		udpSessions: prometheus.NewDesc("pairlb_udp_sessions",
			"UDP sessions in the session table of a virtual service.", vs, nil),
		udpMoves: prometheus.NewDesc("pairlb_udp_session_moves_total",
			"UDP sessions moved to another destination: off a real server gone down or disabled, or off the sorry server once a real server is back.", vs, nil),
		persistEntries: prometheus.NewDesc("pairlb_persistence_entries",
			"Clients in the source-IP persistence table of a virtual service.", vs, nil),
		persistMax: prometheus.NewDesc("pairlb_persistence_max_entries",
			"Bound of the source-IP persistence table of a virtual service (persistence.max_entries).", vs, nil),
		persistEvictions: prometheus.NewDesc("pairlb_persistence_evictions_total",
			"Persistence entries forgotten to make room for a new client while the table was full (not expiries).", vs, nil),
		connLogLines: prometheus.NewDesc("pairlb_connection_log_lines_total",
			"Lines written to the connection log (global.connection_log), one per TCP connection and UDP session.", nil, nil),
		connLogDropped: prometheus.NewDesc("pairlb_connection_log_dropped_total",
			"Connection-log lines lost, by reason: queue_full (the writer fell behind; forwarding never waits for it), write_failed (the file or syslog refused them).",
			[]string{"reason"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connections, c.active, c.serviceState, c.serverConnections, c.serverActive, c.serverDialRetries,
		c.serverUp, c.serverState, c.serverWeight, c.bytes, c.dropped, c.udpSessions, c.udpMoves,
		c.persistEntries, c.persistMax, c.persistEvictions, c.connLogLines, c.connLogDropped} {
		ch <- d
	}
}

var states = []State{Enabled, Disabled, Draining}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if c.b.clog.used() {
		counter(c.connLogLines, c.b.clog.written.Load())
		for i := range numLostCauses {
			counter(c.connLogDropped, c.b.clog.lost[i].Load(), lostCauseNames[i])
		}
	}
	for _, s := range c.b.Status() {
		for _, p := range s.Ports {
			counter(c.connections, p.Accepted, s.Name, strconv.Itoa(int(p.Listen)), p.Proto)
		}
		gauge(c.active, float64(s.Active), s.Name)
		for _, st := range ServiceStates() {
			gauge(c.serviceState, b2f(s.State == st), s.Name, st)
		}
		gauge(c.udpSessions, float64(s.UDPSessions), s.Name)
		counter(c.udpMoves, s.UDPMoves, s.Name)
		if p := s.Persistence; p != nil {
			gauge(c.persistEntries, float64(p.Entries), s.Name)
			gauge(c.persistMax, float64(p.MaxEntries), s.Name)
			counter(c.persistEvictions, p.Evictions, s.Name)
		}
		counter(c.bytes, s.BytesIn, s.Name, "client_to_server")
		counter(c.bytes, s.BytesOut, s.Name, "server_to_client")
		for _, d := range s.Dropped {
			counter(c.dropped, d.Count, s.Name, d.Reason)
		}
		for _, r := range s.RealServers {
			counter(c.serverConnections, r.Total, s.Name, r.Address)
			gauge(c.serverActive, float64(r.Active), s.Name, r.Address)
			counter(c.serverDialRetries, r.DialRetries, s.Name, r.Address)
			gauge(c.serverUp, b2f(r.Up), s.Name, r.Address)
			gauge(c.serverWeight, float64(r.Weight), s.Name, r.Address)
			for _, st := range states {
				gauge(c.serverState, b2f(r.State == st.String()), s.Name, r.Address, st.String())
			}
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
