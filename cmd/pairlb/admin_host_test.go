package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// callHost sends a request to the admin API with the Host header given.
func (td *testDaemon) callHost(t *testing.T, method, path, host, token string) apiResponse {
	t.Helper()
	req, err := http.NewRequest(method, td.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", method, path, host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return apiResponse{code: resp.StatusCode, header: resp.Header, body: body}
}

// TestAdminRefusesForeignHost: a page that reaches the admin API through a rebinding name of
// its own (Host: evil.example) is refused on every endpoint, token or not; IP addresses,
// localhost, names /etc/hosts maps to loopback and global.admin_hosts are served.
func TestAdminRefusesForeignHost(t *testing.T) {
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n127.0.1.1 lb1.example.test lb1 # this box\n10.0.0.9 other.example.test\n::1 ip6-localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func(old string) { hostsFile = old }(hostsFile)
	hostsFile = hosts

	for _, token := range []string{"", "s3cret"} {
		t.Run(fmt.Sprintf("token %q", token), func(t *testing.T) {
			td := startDaemon(t, token, serviceYAML("web", freeTCPPort(t), echoServer(t, "a")))
			// global.admin_hosts as the configuration gives it (config parses the key).
			td.d.mu.Lock()
			cfg := *td.d.cfg
			cfg.Global.AdminHosts = []string{"LB.Admin.Example.Test"}
			td.d.setAdminHosts(&cfg)
			td.d.mu.Unlock()

			port := td.admin[strings.LastIndex(td.admin, ":")+1:]
			for _, path := range []string{"/healthz", "/readyz", "/", "/metrics", "/api/v1/status"} {
				for _, host := range []string{"evil.example", "evil.example:" + port, "other.example.test", "127.0.0.1.evil.example", "localhost.evil.example"} {
					if r := td.callHost(t, http.MethodGet, path, host, token); r.code != http.StatusMisdirectedRequest {
						t.Errorf("GET %s with Host %s: %d, want 421", path, host, r.code)
					}
				}
				for _, host := range []string{"127.0.0.1:" + port, "127.0.0.1", "[::1]:" + port, "localhost:" + port, "LOCALHOST",
					"ui.localhost:" + port, "lb1.example.test:" + port, "lb1", "lb.admin.example.test:" + port} {
					if r := td.callHost(t, http.MethodGet, path, host, token); r.code != http.StatusOK {
						t.Errorf("GET %s with Host %s: %v, want 200", path, host, r)
					}
				}
			}
			r := td.callHost(t, http.MethodPost, "/api/v1/reload", "evil.example", token)
			wantJSONError(t, "POST reload with Host evil.example", r, http.StatusMisdirectedRequest, "global.admin_hosts")
		})
	}
}

// TestLoopbackNamesBounded: the hosts file is read with a bound, and never from something
// that is not a regular file.
func TestLoopbackNamesBounded(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("127.0.0.1 x\n", maxHostsFile/12+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loopbackNames(big); err == nil {
		t.Error("a hosts file larger than the bound was read")
	}
	if _, err := loopbackNames(dir); err == nil {
		t.Error("a directory was read as a hosts file")
	}
	if names, err := loopbackNames(filepath.Join(dir, "missing")); err != nil || names != nil {
		t.Errorf("a missing hosts file: %v %v", names, err)
	}
}
