package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// metricSpec describes one figure a workload reports.
type metricSpec struct {
	key    string
	label  string
	higher bool // higher is better
	ratio  bool // report ratios to direct and HAProxy
	digits int
	proxy  bool // a property of the proxy process: not measured for the direct path
}

// A workload drives traffic through one candidate for one run and returns its figures.
type workload struct {
	name  string
	title string
	port  int  // frontend port; the backend is port+100
	udp   bool // only candidates that carry UDP
	tools []string
	// primary names the figure shown in the chart.
	primary string
	metrics []metricSpec
	// cpuKey is the metric that receives the proxy's CPU per unit of work.
	cpuKey string
	run    func(ctx context.Context, r *runCtx) (result, error)
}

// result is what a workload measured: its figures and the units of work it did, for the
// proxy-CPU-per-unit figure (units are per cpuScale: GB, connections, requests, packets).
type result struct {
	metrics  map[string]float64
	units    float64 // work done, in the unit of cpuKey
	cpuScale float64 // cpuKey = proxy CPU ms * cpuScale / units
}

// runCtx is what a workload run gets.
type runCtx struct {
	target   string // address to dial
	duration time.Duration
	cand     *candidate
	proxyPID int // 0 for the direct path
	back     *backends
	opts     *options
	atPeak   func() // called once while the load is at its peak (for heap profiles)
}

func (r *runCtx) seconds() int { return max(1, int(math.Round(r.duration.Seconds()))) }

var coreMetrics = []metricSpec{
	{key: "core0_busy_pct", label: "core 0 (proxy) busy %", digits: 0},
	{key: "core0_other_pct", label: "core 0 busy, not the proxy's CPU %", digits: 0},
	{key: "core1_busy_pct", label: "core 1 (load, backends) busy %", digits: 0},
}

func allWorkloads() []*workload {
	return []*workload{
		bulkWorkload("bulk1", 1),
		bulkWorkload("bulk8", 8),
		{
			name: "connrate", title: "connection rate (50 clients, connect/request/response/close)",
			port: portHTTP, primary: "conn_per_s", cpuKey: "cpu_us_per_conn",
			metrics: []metricSpec{
				{key: "conn_per_s", label: "connections/s", higher: true, ratio: true},
				{key: "p50_ms", label: "p50 latency ms", ratio: true, digits: 3},
				{key: "p99_ms", label: "p99 latency ms", ratio: true, digits: 3},
				{key: "cpu_us_per_conn", label: "proxy CPU µs/connection", ratio: true, digits: 1, proxy: true},
				{key: "errors", label: "errors"},
			},
			run: runConnRate,
		},
		{
			name: "persistent", title: "persistent request/response (wrk, 50 connections)",
			port: portHTTP, tools: []string{"wrk"}, primary: "req_per_s", cpuKey: "cpu_us_per_req",
			metrics: []metricSpec{
				{key: "req_per_s", label: "requests/s", higher: true, ratio: true},
				{key: "p50_ms", label: "p50 latency ms", ratio: true, digits: 3},
				{key: "p99_ms", label: "p99 latency ms", ratio: true, digits: 3},
				{key: "cpu_us_per_req", label: "proxy CPU µs/request", ratio: true, digits: 2, proxy: true},
				{key: "errors", label: "errors"},
			},
			run: runPersistent,
		},
		{
			name: "udp", title: "UDP echo, 64-byte datagrams", udp: true,
			port: portUDP, primary: "pps", cpuKey: "cpu_us_per_pkt",
			metrics: []metricSpec{
				{key: "pps", label: "datagrams echoed/s (round trips)", higher: true, ratio: true},
				{key: "loss_pct", label: "loss %", digits: 2},
				{key: "cpu_us_per_pkt", label: "proxy CPU µs/round trip", ratio: true, digits: 2, proxy: true},
			},
			run: runUDP,
		},
		{
			name: "idle", title: "concurrent idle connections",
			port: portIdle, primary: "rss_kib_per_conn", cpuKey: "cpu_us_per_conn",
			metrics: []metricSpec{
				{key: "conns", label: "connections held", higher: true},
				{key: "rss_kib_per_conn", label: "proxy RSS KiB/connection", ratio: true, digits: 2, proxy: true},
				{key: "fds_per_conn", label: "proxy fds/connection", ratio: true, digits: 2, proxy: true},
				{key: "pipe_fds_per_conn", label: "of which pipes (splice)", digits: 2, proxy: true},
				{key: "open_per_s", label: "opened/s", higher: true, ratio: true},
				{key: "cpu_us_per_conn", label: "proxy CPU µs/connection", ratio: true, digits: 1, proxy: true},
				{key: "sample_ok_pct", label: "sample answering %", higher: true},
			},
			run: runIdle,
		},
	}
}

// ---- bulk TCP throughput (iperf3) ----

func bulkWorkload(name string, streams int) *workload {
	return &workload{
		name: name, title: fmt.Sprintf("bulk TCP, %d stream(s) (iperf3)", streams),
		port: portBulk, tools: []string{"iperf3"}, primary: "gbps", cpuKey: "cpu_ms_per_gb",
		metrics: []metricSpec{
			{key: "gbps", label: "Gbit/s", higher: true, ratio: true, digits: 2},
			{key: "cpu_ms_per_gb", label: "proxy CPU ms/GB", ratio: true, digits: 1, proxy: true},
			{key: "retransmits", label: "TCP retransmits"},
		},
		run: func(ctx context.Context, r *runCtx) (result, error) { return runIperf(ctx, r, streams) },
	}
}

type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Retransmits float64 `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

func runIperf(ctx context.Context, r *runCtx, streams int) (result, error) {
	host, port, _ := net.SplitHostPort(r.target)
	var rep iperfReport
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(r.seconds()+20)*time.Second)
		out, err := exec.CommandContext(cctx, "iperf3", "-c", host, "-p", port,
			"-t", strconv.Itoa(r.seconds()), "-P", strconv.Itoa(streams), "-J",
			"--connect-timeout", "3000").Output()
		cancel()
		rep = iperfReport{}
		if jerr := json.Unmarshal(out, &rep); jerr != nil && err == nil {
			err = fmt.Errorf("parsing iperf3 output: %w", jerr)
		}
		if rep.Error != "" {
			err = fmt.Errorf("iperf3: %s", rep.Error)
		}
		if err == nil {
			break
		}
		// The iperf3 server takes a moment to reset after a test; one retry covers "busy".
		if attempt == 0 && ctx.Err() == nil {
			time.Sleep(time.Second)
			continue
		}
		return result{}, fmt.Errorf("iperf3 -c %s -P %d: %w", r.target, streams, err)
	}
	s := rep.End.SumReceived
	gb := s.Bytes / 1e9
	return result{
		metrics: map[string]float64{
			"gbps":        s.BitsPerSecond / 1e9,
			"retransmits": rep.End.SumSent.Retransmits,
			"bytes":       s.Bytes,
		},
		units: gb, cpuScale: 1,
	}, nil
}

// ---- persistent request/response (wrk) ----

var (
	wrkRate    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkErrors  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkTotal   = regexp.MustCompile(`(\d+) requests in`)
)

func runPersistent(ctx context.Context, r *runCtx) (result, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(r.seconds()+20)*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "wrk", "-t1", "-c50", fmt.Sprintf("-d%ds", r.seconds()),
		"--latency", "--timeout", "2s", "http://"+r.target+"/").CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return parseWrk(string(out))
}

func parseWrk(out string) (result, error) {
	m := map[string]float64{}
	rate := wrkRate.FindStringSubmatch(out)
	total := wrkTotal.FindStringSubmatch(out)
	if rate == nil || total == nil {
		return result{}, fmt.Errorf("wrk output not understood: %s", out)
	}
	m["req_per_s"], _ = strconv.ParseFloat(rate[1], 64)
	for _, l := range wrkLatency.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(l[2], 64)
		switch l[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		m["p"+l[1]+"_ms"] = v
	}
	errs := 0.0
	if e := wrkErrors.FindStringSubmatch(out); e != nil {
		for _, s := range e[1:] {
			v, _ := strconv.ParseFloat(s, 64)
			errs += v
		}
	}
	if e := wrkNon2xx.FindStringSubmatch(out); e != nil {
		v, _ := strconv.ParseFloat(e[1], 64)
		errs += v
	}
	m["errors"] = errs
	n, _ := strconv.ParseFloat(total[1], 64)
	return result{metrics: m, units: n, cpuScale: 1000}, nil
}
