package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pairlb/pairlb/config"
)

// TestReloadAnswer: POST /api/v1/reload answers the daemon's verdict, and the client gives it
// back: what changed when applied; the errors, the hash that stays and the rejected one when
// not, with the error fields every error answer has; the status carries the last verdict and the
// file's state on disk.
func TestReloadAnswer(t *testing.T) {
	d := newFakeDaemon("tok")
	d.changes = []Change{{Kind: ChangeServerWeight, VirtualService: "web", RealServer: "198.18.2.12", Weight: &WeightChange{From: 1, To: 3}}}
	ts := startServer(t, d, filepath.Join(t.TempDir(), "no-hosts"))
	c := NewClient(ts.addr, []byte("tok"))
	ctx := context.Background()

	v, err := c.Reload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{{Kind: ChangeServerWeight, VirtualService: "web", RealServer: "198.18.2.12", Weight: &WeightChange{From: 1, To: 3},
		Text: "real server 198.18.2.12 of web re-weighted 1 -> 3"}}
	if diff := cmp.Diff(want, v.Changes); diff != "" || v.Result != ReloadOK || v.ConfigHash != d.cfg.Hash || v.Trigger != TriggerReload || v.Errors != nil {
		t.Errorf("applied: %+v; changes (-want +got):\n%s", v, diff)
	}
	r := ts.call(t, http.MethodPost, PathReload, "", "tok")
	if !strings.Contains(string(r.body), `"text": "real server 198.18.2.12 of web re-weighted 1 -\u003e 3"`) || strings.Contains(string(r.body), `"error"`) {
		t.Errorf("the applied answer: %s", r.body)
	}

	// A file that does not validate: 422, every problem, the verdict too.
	d.mu.Lock()
	d.applyErr = config.Errors{{File: "pairlb.yaml", Line: 3, Msg: "bad port"}, {File: "pairlb.yaml", Line: 9, Path: "global.admin", Msg: "bad address"}}
	d.mu.Unlock()
	v, err = c.Reload(ctx)
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusUnprocessableEntity || v == nil {
		t.Fatalf("rejected: %+v, %v", v, err)
	}
	if v.Result != ReloadFailed || v.ConfigHash != d.cfg.Hash || v.RejectedHash != "rejected-hash" ||
		!cmp.Equal(v.Errors, []string{"pairlb.yaml:3: bad port", "pairlb.yaml:9: global.admin: bad address"}) || len(v.Changes) != 0 {
		t.Errorf("rejected verdict: %+v", v)
	}
	if he.Body.Error != "reload rejected; the running configuration stays" || len(he.Body.Errors) != 2 ||
		!strings.Contains(err.Error(), "\n  pairlb.yaml:9: global.admin: bad address") {
		t.Errorf("rejected: the error answer %+v, %v", he.Body, err)
	}
	// One that cannot be applied: 500, one entry per line of the error.
	d.mu.Lock()
	d.applyErr = errors.Join(errRefused, errors.New("routing: adding rule from 198.51.100.10 to table 201: operation not permitted"))
	d.mu.Unlock()
	if v, err := c.Reload(ctx); !errors.As(err, &he) || he.Code != http.StatusInternalServerError || v == nil || len(v.Errors) != 2 || v.Errors[0] != errRefused.Error() {
		t.Errorf("not applied: %+v, %v", v, err)
	}

	// The status carries the last verdict and the file on disk.
	d.mu.Lock()
	d.onDisk = ConfigOnDisk{State: OnDiskDiffers, Hash: "rejected-hash"}
	d.mu.Unlock()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastReload == nil || st.LastReload.Result != ReloadFailed || len(st.LastReload.Errors) != 2 || st.ConfigOnDisk == nil || *st.ConfigOnDisk != d.onDisk {
		t.Errorf("status: last_reload %+v, config_on_disk %+v", st.LastReload, st.ConfigOnDisk)
	}

	// An answer that is no verdict (a wrong token) gives none.
	if v, err := NewClient(ts.addr, []byte("wrong")).Reload(ctx); v != nil || !errors.As(err, &he) || he.Code != http.StatusUnauthorized {
		t.Errorf("wrong token: %+v, %v", v, err)
	}
}

// TestWriteReload: what `pairlb reload` prints of a verdict.
func TestWriteReload(t *testing.T) {
	cfg := &config.Config{Path: "/etc/pairlb/pairlb.yaml", Hash: "3f2a9c1b7e4d5566", VirtualServices: []config.VirtualService{{Name: "web"}}}
	prev := &config.Config{Path: cfg.Path, Hash: "8b1d0e6f2a930011"}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name string
		r    *Reload
		want string
	}{
		{"changes", Applied(at, TriggerReload, prev, cfg, []Change{
			{Kind: ChangeServiceAdded, VirtualService: "edge"},
			{Kind: ChangeServerRemoved, VirtualService: "web", RealServer: "10.11.1.12:4443"},
		}), "/etc/pairlb/pairlb.yaml applied (config 3f2a9c1b7e4d, was 8b1d0e6f2a93), 2 changes:\n" +
			"virtual service edge added\nreal server 10.11.1.12:4443 removed from web\n"},
		{"one change", Applied(at, TriggerReload, prev, cfg, []Change{{Kind: ChangeGlobal, Settings: []string{"drain_timeout", "admin_token"}}}),
			"/etc/pairlb/pairlb.yaml applied (config 3f2a9c1b7e4d, was 8b1d0e6f2a93), 1 change:\nglobal changed: drain_timeout, admin_token\n"},
		{"nothing, same file", Applied(at, TriggerReload, cfg, cfg, nil),
			"/etc/pairlb/pairlb.yaml applied (config 3f2a9c1b7e4d, was 3f2a9c1b7e4d): nothing changed (the file is the one in force)\n"},
		{"nothing, another file", Applied(at, TriggerReload, prev, cfg, nil),
			"/etc/pairlb/pairlb.yaml applied (config 3f2a9c1b7e4d, was 8b1d0e6f2a93): nothing changed (the file differs only in comments, layout or order)\n"},
		{"rejected", Rejected(at, cfg.Path, "ffff", cfg, config.Errors{{File: cfg.Path, Line: 4, Msg: "a"}, {File: cfg.Path, Line: 9, Msg: "b"}}),
			"/etc/pairlb/pairlb.yaml rejected; the running configuration (3f2a9c1b7e4d) stays:\n/etc/pairlb/pairlb.yaml:4: a\n/etc/pairlb/pairlb.yaml:9: b\n"},
	} {
		var b bytes.Buffer
		WriteReload(&b, tc.r)
		if b.String() != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, b.String(), tc.want)
		}
	}
}

// TestPrintStatusConfigState: `pairlb status` says what the page's banner says.
func TestPrintStatusConfigState(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	running := &config.Config{Path: "/etc/pairlb/pairlb.yaml", Hash: "3f2a9c1b7e4d5566"}
	status := func(r *Reload, d ConfigOnDisk) *Status {
		return &Status{Version: "dev", Ready: true, ConfigFile: running.Path, ConfigHash: running.Hash, VirtualServices: []VirtualService{},
			LastReload: r, ConfigOnDisk: &d}
	}
	failed := Rejected(at, running.Path, "aaaabbbbccccdddd", running, config.Errors{{File: running.Path, Line: 4, Msg: "bad port"}})
	for _, tc := range []struct {
		name      string
		st        *Status
		want, not []string
	}{
		{"in force", status(Applied(at, TriggerStart, nil, running, nil), ConfigOnDisk{State: OnDiskSame, Hash: running.Hash}),
			nil, []string{"FAILED", "DIFFERS", "cannot be compared"}},
		{"rejected, on disk", status(failed, ConfigOnDisk{State: OnDiskDiffers, Hash: "aaaabbbbccccdddd"}),
			[]string{"\nLAST RELOAD FAILED at 2026-01-02 03:04:05: /etc/pairlb/pairlb.yaml rejected, the running configuration (3f2a9c1b7e4d) stays:\n  /etc/pairlb/pairlb.yaml:4: bad port\n"},
			[]string{"DIFFERS"}},
		{"rejected, edited since", status(failed, ConfigOnDisk{State: OnDiskDiffers, Hash: "eeeeffff00001111"}),
			[]string{"LAST RELOAD FAILED", "\nRUNNING FILE DIFFERS FROM DISK: /etc/pairlb/pairlb.yaml is eeeeffff0000 now, the running configuration 3f2a9c1b7e4d (pairlb reload applies it)\n"}, nil},
		{"edited", status(Applied(at, TriggerReload, running, running, nil), ConfigOnDisk{State: OnDiskDiffers, Hash: "eeeeffff00001111"}),
			[]string{"RUNNING FILE DIFFERS FROM DISK"}, []string{"FAILED"}},
		{"unreadable", status(nil, ConfigOnDisk{State: OnDiskUnknown, Error: "reading the configuration /etc/pairlb/pairlb.yaml: stat: no such file or directory"}),
			[]string{"\nthe file on disk cannot be compared with the running configuration: reading the configuration /etc/pairlb/pairlb.yaml: stat: no such file or directory\n"}, nil},
	} {
		var b strings.Builder
		WriteTable(&b, tc.st, at)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s: status lacks %q:\n%s", tc.name, w, b.String())
			}
		}
		for _, w := range tc.not {
			if strings.Contains(b.String(), w) {
				t.Errorf("%s: status says %q:\n%s", tc.name, w, b.String())
			}
		}
	}
	// The JSON the page reads: the field names app.js uses.
	raw, err := json.Marshal(status(failed, ConfigOnDisk{State: OnDiskDiffers, Hash: "aaaabbbbccccdddd"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"last_reload":{"result":"failed","config_hash":"3f2a9c1b7e4d5566"`, `"trigger":"reload"`, `"rejected_hash":"aaaabbbbccccdddd"`,
		`"errors":["/etc/pairlb/pairlb.yaml:4: bad port"]`, `"config_on_disk":{"state":"differs","hash":"aaaabbbbccccdddd"}`, `"time":"2026-01-02T03:04:05Z"`} {
		if !strings.Contains(string(raw), key) {
			t.Errorf("the status JSON lacks %s:\n%s", key, raw)
		}
	}
}
