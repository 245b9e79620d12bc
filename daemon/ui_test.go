package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pairlb/pairlb/internal/testenv"
)

// chromiumPath finds the browser for the status-page tests. Under CI=true a missing browser is a
// failure (the test command installs the Debian package chromium); elsewhere the test skips.
func chromiumPath(t *testing.T) string {
	t.Helper()
	return testenv.Program(t, "chromium", "chromium", "chromium-browser")
}

// browser starts a headless Chromium with a fresh profile that talks to nothing but loopback,
// and returns a tab's context, ended with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// Start the browser on a context without a deadline (see chromedp.Run).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// run does steps with a deadline.
func runBrowser(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// listenOn starts a TCP server on a loopback address of the caller's choice that greets with
// that address.
func listenOn(t *testing.T, ip string, port int) string {
	return testenv.GreetServer(t, net.JoinHostPort(ip, fmt.Sprint(port)), ip)
}

// pump sends n bytes through addr, half-closes and reads everything back.
func pump(t *testing.T, addr string, n int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		_, _ = c.Write(make([]byte, n))
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("pump %s: %v", addr, err)
	}
}

// TestStatusPage drives the page in Chromium: the services are listed, Drain on a server sets
// it draining in the daemon, and the page shows it. PAIRLB_SCREENSHOT=path saves a PNG of the
// page (docs/status-page.png is made with
// `PAIRLB_SCREENSHOT=$PWD/docs/status-page.png go test ./daemon -run TestStatusPage$`).
func TestStatusPage(t *testing.T) {
	ctx := browser(t)
	// Loopback stand-ins for a Front End pool (two up, one without a listener) and an Edge pool.
	fePort := testenv.FreeTCPPort(t)
	listenOn(t, "127.0.11.11", fePort)
	listenOn(t, "127.0.11.12", fePort)
	fe2, fe3 := "127.0.11.12", "127.0.11.13" // real-server keys
	edge1, edge2 := listenOn(t, "127.0.21.11", 0), listenOn(t, "127.0.21.12", 0)
	web, edgePort := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	services := fmt.Sprintf(`  - name: fe-pool-sip
    vip: 127.0.0.1
    ports: ["%d/tcp->%d", "%d/tcp->%d"]
    scheduler: leastconn
    health: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 1}
    real_servers:
      - {address: %q}
      - {address: %q}
      - {address: %q}
  - name: edge-access
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    persistence: {type: source-ip, timeout: 300s}
    health: {type: none}
    real_servers:
      - {address: %q}
      - {address: %q, weight: 2}
      - {address: "127.0.21.13:%d", enabled: false}
  - name: web-redirect
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    redirect: "https://%%h%%s"
`, web, fePort, testenv.FreeTCPPort(t), fePort, "127.0.11.11", "127.0.11.12", fe3,
		edgePort, edge1, edge2, testenv.FreeTCPPort(t), testenv.FreeTCPPort(t))
	td := startDaemon(t, "", services)
	// Some traffic, so that the counters are not all zero.
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", web), "127.0.11.11")
	for i := range 6 {
		pump(t, fmt.Sprintf("127.0.0.1:%d", web), 20000*(i+1))
		pump(t, fmt.Sprintf("127.0.0.1:%d", edgePort), 3000*(i+1))
	}
	held, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", web))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	runBrowser(t, ctx, "loading the page",
		chromedp.Navigate(td.admin+"/"),
		chromedp.WaitVisible(chromedp.CSS(`section.vs[data-vs="edge-access"]`)),
	)
	names, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("section.vs")].map(s => s.dataset.vs)`))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != "[fe-pool-sip edge-access web-redirect]" {
		t.Errorf("services on the page: %q", names)
	}
	// What places a new client: fe-pool-sip's scheduler; edge-access's persistence hash, with
	// its default scheduler named as unused.
	placements, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll("section.vs")].map(s => [s.dataset.vs, (s.querySelector(".placement") || {}).textContent || ""]))`))
	if err != nil {
		t.Fatal(err)
	}
	for vs, want := range map[string]string{
		"fe-pool-sip":  "placement leastconn",
		"edge-access":  "placement hash (scheduler leastconn unused)",
		"web-redirect": "",
	} {
		if placements[vs] != want {
			t.Errorf("%s shows %q, want %q", vs, placements[vs], want)
		}
	}
	persistence, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('section.vs[data-vs="edge-access"] .persistence').textContent`))
	if err != nil || !strings.HasPrefix(persistence, "persistence source-ip, ") || !strings.HasSuffix(persistence, " / 1048576 clients") {
		t.Errorf("edge-access persistence fact: %q, %v", persistence, err)
	}

	// Health settles: fe3 has no listener and shows down.
	runBrowser(t, ctx, "waiting for health",
		chromedp.WaitVisible(chromedp.CSS(`tr.rs.down[data-rs="`+fe3+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr.rs.available[data-rs="`+fe2+`"]`)),
	)

	// Drain fe2 with a real mouse click; the daemon has it draining, and so does the page.
	runBrowser(t, ctx, "clicking drain",
		chromedp.Click(chromedp.CSS(`button[data-vs="fe-pool-sip"][data-rs="`+fe2+`"][data-action="drain"]`), chromedp.NodeVisible),
	)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s := td.status(t, "").Find("fe-pool-sip", fe2); s != nil && s.State == "draining" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the click on Drain did not reach the daemon")
		}
		time.Sleep(50 * time.Millisecond)
	}
	runBrowser(t, ctx, "the page shows the drain",
		chromedp.WaitVisible(chromedp.CSS(`tr.rs.draining[data-rs="`+fe2+`"][data-state="draining"]`)),
		chromedp.WaitReady(chromedp.CSS(`button[data-rs="`+fe2+`"][data-action="drain"][disabled]`)),
	)

	if path := os.Getenv("PAIRLB_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", path, len(png))
	}

	checkServiceState(t, ctx, td, "fe-pool-sip", "127.0.11.11", fe3)
	checkReloadBanner(t, ctx, td, services)
}

// checkServiceState: each service has a badge of its state and the header counts those down or
// degraded; each real server says since when it is in its condition; the rates' arithmetic.
// vs has one server up (up), one draining and one without a listener (down).
func checkServiceState(t *testing.T, ctx context.Context, td *testDaemon, vs, up, down string) {
	t.Helper()
	refresh := chromedp.Evaluate[chromedp.Void]("refresh(); true")
	eval := func(what, js string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return s
	}
	badge := `section.vs[data-vs="` + vs + `"] h2 .svc-state`
	runBrowser(t, ctx, "the degraded badge", refresh,
		chromedp.WaitVisible(chromedp.CSS(badge+`.warn[data-state="degraded"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#ready.badge.warn`)))
	if got := eval("badges", `[...document.querySelectorAll("section.vs")].map(s => s.dataset.vs + " " + s.querySelector(".svc-state").textContent).join(", ")`); got != vs+" degraded, edge-access up, web-redirect up" {
		t.Errorf("badges: %q", got)
	}
	if got := eval("header", `document.getElementById("ready").textContent`); got != "ready, 1 service degraded" {
		t.Errorf("header: %q", got)
	}
	if got := eval("badge title", `document.querySelector('`+badge+`').title`); got != "1 of 2 real servers in rotation available" {
		t.Errorf("badge title: %q", got)
	}
	since := eval("since", `document.querySelector('tr.rs[data-vs="`+vs+`"][data-rs="`+down+`"] td.since').textContent`)
	if !regexp.MustCompile(`^down for \d+(s|m\d+s), since \d\d:\d\d:\d\d$`).MatchString(since) {
		t.Errorf("since of %s: %q", down, since)
	}
	runBrowser(t, ctx, "the rates of the last minute",
		chromedp.WaitVisible(chromedp.CSS(`section.vs[data-vs="`+vs+`"] .rates .rate-conn`)))
	if got := eval("rates", `document.querySelector('section.vs[data-vs="`+vs+`"] .rates').textContent`); !regexp.MustCompile(`^last \d+ s: \d+\.\d connections/s · client→server \d+(\.\d)? k?bit/s · server→client \d+(\.\d)? k?bit/s$`).MatchString(got) {
		t.Errorf("rates: %q", got)
	}

	// The last available server disabled: the service is down, and so is the header.
	if _, err := td.client().SetServerState(context.Background(), vs, up, "disable"); err != nil {
		t.Fatal(err)
	}
	runBrowser(t, ctx, "the down badge", refresh,
		chromedp.WaitVisible(chromedp.CSS(badge+`.bad[data-state="down"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#ready.badge.bad`)))
	if got := eval("header", `document.getElementById("ready").textContent`); got != "ready, 1 service down" {
		t.Errorf("header with %s down: %q", vs, got)
	}
	if got := eval("badge title", `document.querySelector('`+badge+`').title`); got != "none of 1 real server in rotation available, new clients are refused" {
		t.Errorf("down badge title: %q", got)
	}
	if _, err := td.client().SetServerState(context.Background(), vs, up, "enable"); err != nil {
		t.Fatal(err)
	}
	runBrowser(t, ctx, "degraded again", refresh, chromedp.WaitVisible(chromedp.CSS(badge+`[data-state="degraded"]`)))

	// The arithmetic of the rates and the texts, on samples made up here.
	for js, want := range map[string]string{
		// 60 s of samples: 1 connection/s, 1 Mbit/s one way, 100 bit/s the other.
		`(() => { let h = []; for (const [t, c, i, o] of [[0, 0, 0, 0], [30000, 30, 1, 2], [60000, 60, 7500000, 750]]) h = pushSample(h, {t, c, i, o}, 60000);
			const r = rates(h); return [h.length, r.seconds, r.connections, r.c2s, r.s2c, bitRate(r.c2s), bitRate(r.s2c)].join(" "); })()`: "3 60 1 1000000 100 1.0 Mbit/s 100 bit/s",
		// The oldest sample leaves once the next one is at the window's start.
		`(() => { let h = []; for (const [t, c] of [[0, 0], [30000, 30], [60000, 90], [90000, 150]]) h = pushSample(h, {t, c, i: 0, o: 0}, 60000);
			const r = rates(h); return [h.map(s => s.t).join(","), r.seconds, r.connections].join(" "); })()`: "30000,60000,90000 60 2",
		// A counter that went back (a restart) starts afresh; one sample has no rate.
		`(() => { let h = pushSample(pushSample([], {t: 0, c: 10, i: 10, o: 10}, 60000), {t: 2000, c: 3, i: 10, o: 10}, 60000);
			return h.length + " " + rates(h); })()`: "1 null",
		`(() => { let h = pushSample(pushSample([], {t: 5, c: 1, i: 1, o: 1}, 60000), {t: 5, c: 2, i: 2, o: 2}, 60000); return h.length + " " + rates(h); })()`: "1 null",
		// Under a second of samples is too short to say.
		`(() => { let h = pushSample(pushSample([], {t: 0, c: 1, i: 1, o: 1}, 60000), {t: 999, c: 2, i: 2, o: 2}, 60000); return h.length + " " + rates(h); })()`: "2 null",
		`[bitRate(0), bitRate(999), bitRate(1500), bitRate(2.5e9)].join(", ")`:                                                                                    "0 bit/s, 999 bit/s, 1.5 kbit/s, 2.5 Gbit/s",
		`[shortDuration(45e3), shortDuration(725e3), shortDuration(7985e3), shortDuration(274e6)].join(" ")`:                                                      "45s 12m5s 2h13m 3d4h",
		`[readyText({ready: true, services_down: 2}), readyText({ready: true, services_down: 1, services_degraded: 2}), readyText({ready: false})].join("; ")`:    "ready, 2 services down; ready, 1 service down, 2 degraded; not ready",
	} {
		if got := eval("arithmetic", "String("+js+")"); got != want {
			t.Errorf("%s\n= %q, want %q", js, got, want)
		}
	}
}

// checkReloadBanner: the page's banner is red while the last reload failed, with its errors, or
// while the file on disk is not the running configuration, and gone when they are one again;
// the header says when the file was last read. services are td's running virtual services.
// The page is asked to refresh at once after each change rather than waited on for its 2 s.
func checkReloadBanner(t *testing.T, ctx context.Context, td *testDaemon, services string) {
	t.Helper()
	refresh := chromedp.Evaluate[chromedp.Void]("refresh(); true")
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	runBrowser(t, ctx, "no banner while the file is the running one",
		chromedp.WaitReady(chromedp.CSS(`#config-banner[data-state="ok"][hidden]`)))
	if got := text("#last-reload"); !strings.HasPrefix(got, "loaded at start 20") {
		t.Errorf("the header says %q, want the time of the start", got)
	}

	td.write(t, services+"  - name: broken\n    vip: 127.0.0.1\n    ports: [\"70000/tcp\"]\n    real_servers: [{address: 127.0.0.1}]\n")
	if _, err := td.client().Reload(context.Background()); err == nil {
		t.Fatal("the broken file was applied")
	}
	runBrowser(t, ctx, "the banner of a failed reload", refresh,
		chromedp.WaitVisible(chromedp.CSS(`#config-banner.bad[data-state="failed"]`)))
	banner := text("#config-banner")
	for _, want := range []string{"Last reload failed at 20", td.file + " rejected (the file on disk is the one rejected); the running configuration ",
		td.file + ":", `"70000/tcp": port out of range 1-65535`} {
		if !strings.Contains(banner, want) {
			t.Errorf("the banner lacks %q: %q", want, banner)
		}
	}
	if got := text("#last-reload"); !strings.HasSuffix(got, " FAILED") {
		t.Errorf("the header says %q after the failed reload", got)
	}

	td.write(t, services+"# a comment\n")
	if _, err := td.client().Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	runBrowser(t, ctx, "no banner after a good reload", refresh,
		chromedp.WaitReady(chromedp.CSS(`#config-banner[data-state="ok"][hidden]`)))
	if got := text("#last-reload"); !strings.HasPrefix(got, "last reload 20") || !strings.HasSuffix(got, " (nothing changed)") {
		t.Errorf("the header says %q after a reload that changed nothing", got)
	}

	td.write(t, services+"# edited, not reloaded\n")
	runBrowser(t, ctx, "the banner of a file edited and not reloaded", refresh,
		chromedp.WaitVisible(chromedp.CSS(`#config-banner.bad[data-state="differs"]`)))
	if banner := text("#config-banner"); !strings.Contains(banner, "Running file differs from disk: "+td.file+" is ") ||
		!strings.Contains(banner, "pairlb reload applies it.") {
		t.Errorf("the banner says %q", banner)
	}
}

// TestStatusPageToken: with a token file, the page asks for the token, keeps it for the tab and
// then lists the services.
func TestStatusPageToken(t *testing.T) {
	ctx := browser(t)
	td := startDaemon(t, "page-token", testenv.LoopbackService("web", testenv.FreeTCPPort(t), testenv.EchoServer(t, "a")))
	runBrowser(t, ctx, "the token form",
		chromedp.Navigate(td.admin+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#token-form`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), "page-token"),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`), chromedp.NodeVisible),
		chromedp.WaitVisible(chromedp.CSS(`section.vs[data-vs="web"]`)),
		chromedp.WaitNotVisible(chromedp.CSS(`#token-form`)),
	)
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`sessionStorage.getItem("pairlb-admin-token")`))
	if err != nil || stored != "page-token" {
		t.Errorf("sessionStorage token: %q, %v", stored, err)
	}
}

// TestStatusPageAddress: the page's maintenance panel drains an address in every service that
// has it with one click, through the token the page holds, says which servers changed, and
// shows them drained; Enable everywhere puts them back.
func TestStatusPageAddress(t *testing.T) {
	ctx := browser(t)
	fe1sip, fe1web := listenOn(t, "127.0.51.11", 0), listenOn(t, "127.0.51.11", 0)
	fe2 := listenOn(t, "127.0.51.12", 0)
	services := fmt.Sprintf(`  - name: sip
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    health: {type: none}
    real_servers: [{address: %q}, {address: %q}]
`, testenv.FreeTCPPort(t), fe1sip, fe2) + testenv.LoopbackService("web", testenv.FreeTCPPort(t), fe1web)
	td := startDaemon(t, "page-token", services)
	runBrowser(t, ctx, "the page with its token",
		chromedp.Navigate(td.admin+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#token-form`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), "page-token"),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`), chromedp.NodeVisible),
		chromedp.WaitVisible(chromedp.CSS(`#addresses tr.addr-row[data-addr="127.0.51.11"][data-states="enabled"]`)),
	)
	addrs, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#addresses tr.addr-row")].map(r => r.dataset.addr + " " + r.children[1].textContent)`))
	if err != nil || fmt.Sprint(addrs) != "[127.0.51.11 sip, web (2 real servers) 127.0.51.12 sip (1 real server)]" {
		t.Errorf("addresses on the page: %q, %v", addrs, err)
	}

	runBrowser(t, ctx, "clicking drain everywhere",
		chromedp.Click(chromedp.CSS(`button[data-addr="127.0.51.11"][data-action="drain"]`), chromedp.NodeVisible),
	)
	if !testenv.Eventually(10*time.Second, func() bool {
		st := td.status(t, "page-token")
		a, b := st.Find("sip", fe1sip), st.Find("web", fe1web)
		return a != nil && b != nil && a.State == "draining" && b.State == "draining"
	}) {
		t.Fatalf("the click on Drain everywhere did not reach both services: %+v", td.status(t, "page-token"))
	}
	if s := td.status(t, "page-token").Find("sip", fe2); s == nil || s.State != "enabled" {
		t.Errorf("the drain of 127.0.51.11 changed %s: %+v", fe2, s)
	}
	runBrowser(t, ctx, "the page shows both drained",
		chromedp.WaitVisible(chromedp.CSS(`tr.rs.draining.drained[data-vs="sip"][data-rs="`+fe1sip+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr.rs.draining.drained[data-vs="web"][data-rs="`+fe1web+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#addresses tr.addr-row[data-addr="127.0.51.11"][data-states="drained"]`)),
		chromedp.WaitReady(chromedp.CSS(`button[data-addr="127.0.51.11"][data-action="drain"][disabled]`)),
	)
	notice, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("notice").innerText`))
	if want := "sip " + fe1sip + ": draining (was enabled, active 0)\nweb " + fe1web + ": draining (was enabled, active 0)"; err != nil || notice != want {
		t.Errorf("notice after the drain: %q, %v; want %q", notice, err, want)
	}
	state, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('tr.rs[data-vs="web"] td.state').textContent`))
	if err != nil || state != "drained" {
		t.Errorf("web's state cell: %q, %v", state, err)
	}

	runBrowser(t, ctx, "clicking enable everywhere",
		chromedp.Click(chromedp.CSS(`button[data-addr="127.0.51.11"][data-action="enable"]`), chromedp.NodeVisible),
		chromedp.WaitVisible(chromedp.CSS(`#addresses tr.addr-row[data-addr="127.0.51.11"][data-states="enabled"]`)),
	)
	st := td.status(t, "page-token")
	if a, b := st.Find("sip", fe1sip), st.Find("web", fe1web); a.State != "enabled" || b.State != "enabled" {
		t.Errorf("after Enable everywhere: %s %s", a.State, b.State)
	}
}
