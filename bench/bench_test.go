package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

const wrkSample = `Running 1s test @ http://127.0.0.1:15003/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  500.00us  30.00ms   90.00%
    Req/Sec    26.00k     1.00k   28.00k    70.00%
  Latency Distribution
     50%  823.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.50s
  26577 requests in 1.00s, 3.09MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  26577.12
Transfer/sec:      3.09MB
`

func TestParseWrk(t *testing.T) {
	res, err := parseWrk(wrkSample)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"req_per_s": 26577.12, "p50_ms": 0.823, "p99_ms": 2500, "errors": 7}
	for k, v := range want {
		if got := res.metrics[k]; got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if res.units != 26577 {
		t.Errorf("units = %v, want 26577", res.units)
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{12, 10, 11})
	if s.Median != 11 || s.Min != 10 || s.Max != 12 || s.N != 3 {
		t.Fatalf("summarize = %+v", s)
	}
	if got := s.spreadPct(); got < 9.09 || got > 9.10 {
		t.Errorf("spread = %v, want 9.09", got)
	}
	if got := percentile([]time.Duration{1, 2, 3, 4}, 50); got != 2 {
		t.Errorf("p50 = %v, want 2", got)
	}
}

func TestUpdateReadme(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	orig := "intro\n" + readmeBegin + "\nold table\n" + readmeEnd + "\nafter\n"
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	o := &options{reps: 1}
	r := newReport(o, &Machine{Command: "go run ./bench -short"}, nil, nil, nil)
	if err := r.updateReadme(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	s := string(b)
	if strings.Contains(s, "old table") || !strings.HasPrefix(s, "intro\n"+readmeBegin) ||
		!strings.HasSuffix(s, readmeEnd+"\nafter\n") || !strings.Contains(s, "go run ./bench -short") {
		t.Errorf("README after update:\n%s", s)
	}
	if err := os.WriteFile(path, []byte("no markers"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.updateReadme(path); err == nil {
		t.Error("README without markers: want an error")
	}
}

// TestPairlbConfigs: both of pairlb's generated configurations are valid, and only
// pairlb-connlog's turns the connection log on, to a file of the run's directory.
func TestPairlbConfigs(t *testing.T) {
	for _, c := range []*candidate{findCandidate("pairlb"), findCandidate("pairlb-connlog")} {
		e := &proxyEnv{dir: t.TempDir(), maxConns: 1000}
		if _, err := c.start(e); err != nil {
			t.Fatal(err)
		}
		src, err := os.ReadFile(filepath.Join(e.dir, "pairlb.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Parse("pairlb.yaml", src)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, src)
		}
		want := ""
		if c.name == "pairlb-connlog" {
			want = filepath.Join(e.dir, "connections.tcplog")
		}
		if got := cfg.Global.ConnectionLog.To; got != want || !c.pairlb() {
			t.Errorf("%s: connection log %q, want %q", c.name, got, want)
		}
	}
}
