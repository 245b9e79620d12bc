package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// DialAddr is the address a client on this box dials to reach an admin listener on listen: a
// listener on every address (0.0.0.0, ::) is reached on the loopback address of its family.
// Every command, the keepalived scripts and the pair checker reach the local pairlb by it.
func DialAddr(listen netip.AddrPort) netip.AddrPort {
	if !listen.Addr().IsUnspecified() {
		return listen
	}
	lo := netip.IPv6Loopback()
	if listen.Addr().Is4() {
		lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return netip.AddrPortFrom(lo, listen.Port())
}

// DefaultMaxAnswer bounds what a client reads of one answer, whatever the server sends.
const DefaultMaxAnswer = 64 << 20

// Client asks one pairlb's admin API. Each call is bounded by its context; HTTP may add a
// timeout of its own.
type Client struct {
	Addr      string       // host:port
	Token     []byte       // the bearer token; nil: none is sent
	HTTP      *http.Client // nil: http.DefaultClient
	MaxAnswer int64        // what is read of an answer at most; 0: DefaultMaxAnswer
}

// NewClient returns a client for the admin API at addr (host:port) that sends token.
func NewClient(addr string, token []byte) *Client {
	return &Client{Addr: addr, Token: token}
}

// ClientFor is the client for the admin API of the pairlb that runs cfg on this box: its
// global.admin (DialAddr) and the token Load read for global.admin_token_file.
func ClientFor(cfg *config.Config) *Client {
	return NewClient(DialAddr(cfg.Global.Admin).String(), cfg.Global.AdminToken)
}

// HTTPError is an answer other than 2xx.
type HTTPError struct {
	Method, Path string
	Code         int    // 503
	Status       string // "503 Service Unavailable"
	// Body is the API's JSON error; empty when the answer held none (/readyz answers text).
	Body ErrorResponse
	raw  []byte // the answer as read, for the calls whose error answers hold more (Reload)
}

func (e *HTTPError) Error() string {
	if e.Body.Error == "" {
		return fmt.Sprintf("admin API: %s %s: %s", e.Method, e.Path, e.Status)
	}
	msg := e.Body.Error
	for _, s := range e.Body.Errors {
		msg += "\n  " + s
	}
	return fmt.Sprintf("admin API: %s (%s)", msg, e.Status)
}

// do sends a request and returns the body of a 2xx answer; any other is an *HTTPError.
func (c *Client) do(ctx context.Context, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.Addr+path, nil)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.Addr, err)
	}
	if len(c.Token) > 0 {
		req.Header.Set("Authorization", "Bearer "+string(c.Token))
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	limit := c.MaxAnswer
	if limit <= 0 {
		limit = DefaultMaxAnswer
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("admin API: reading the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &HTTPError{Method: method, Path: path, Code: resp.StatusCode, Status: resp.Status, raw: body}
		_ = json.Unmarshal(body, &e.Body) // text (/readyz) or not pairlb's: the status says it
		return nil, e
	}
	return body, nil
}

// doJSON is do with the answer decoded into out.
func (c *Client) doJSON(ctx context.Context, method, path string, out any) error {
	body, err := c.do(ctx, method, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Status asks GET /api/v1/status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.doJSON(ctx, http.MethodGet, PathStatus, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// StatusJSON is the answer to GET /api/v1/status as the server wrote it, checked to be JSON.
func (c *Client) StatusJSON(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.doJSON(ctx, http.MethodGet, PathStatus, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// SetServerState asks POST .../virtual-services/VS/real-servers/RS/ACTION, action being
// enable, disable or drain.
func (c *Client) SetServerState(ctx context.Context, vs, rs, action string) (*ServerState, error) {
	var out ServerState
	path := "/api/v1/virtual-services/" + url.PathEscape(vs) + "/real-servers/" + url.PathEscape(rs) + "/" + url.PathEscape(action)
	if err := c.doJSON(ctx, http.MethodPost, path, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AddressState asks GET /api/v1/real-servers/ADDRESS: every real server the address names, in
// every virtual service, with what each has open.
func (c *Client) AddressState(ctx context.Context, addr string) (*AddressState, error) {
	var out AddressState
	if err := c.doJSON(ctx, http.MethodGet, PathRealServers+url.PathEscape(addr), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetAddressState asks POST /api/v1/real-servers/ADDRESS/ACTION, action being enable, disable or
// drain: the state set on every real server the address names, in every virtual service.
func (c *Client) SetAddressState(ctx context.Context, addr, action string) (*AddressState, error) {
	var out AddressState
	if err := c.doJSON(ctx, http.MethodPost, PathRealServers+url.PathEscape(addr)+"/"+url.PathEscape(action), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ErrNotDraining is WaitDrained's answer for an address that some virtual service still sends
// new connections to: waiting for it to empty would not end, or would end by chance.
var ErrNotDraining = errors.New("still enabled: drain or disable it first")

// pollTimeout bounds each request of WaitDrained.
const pollTimeout = 10 * time.Second

// WaitDrained asks GET /api/v1/real-servers/ADDRESS every interval until no real server the
// address names has a connection or UDP session open, and returns the last answer. progress,
// when not nil, is called with the first answer and with each one whose count differs from the
// one before. A server still enabled somewhere is ErrNotDraining (naming the services); the end
// of ctx is its error, with the last answer, so that the caller can say what was still open.
func (c *Client) WaitDrained(ctx context.Context, addr string, interval time.Duration, progress func(*AddressState)) (*AddressState, error) {
	var last *AddressState
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, pollTimeout)
		st, err := c.AddressState(rctx, addr)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return last, fmt.Errorf("waiting for %s to drain: %w", addr, ctx.Err())
			}
			return last, err
		}
		var enabled []string
		for _, rs := range st.RealServers {
			if rs.State == lb.Enabled.String() {
				enabled = append(enabled, rs.VirtualService)
			}
		}
		if len(enabled) > 0 {
			return st, fmt.Errorf("real server address %s in %s: %w", st.Address, strings.Join(enabled, ", "), ErrNotDraining)
		}
		if progress != nil && (last == nil || last.Active != st.Active) {
			progress(st)
		}
		last = st
		if st.Active == 0 {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("waiting for %s to drain: %w", addr, ctx.Err())
		case <-tick.C:
		}
	}
}

// Reload asks POST /api/v1/reload: read the file again and apply it. The verdict says what
// changed. A file the daemon rejected gives both its verdict (Result ReloadFailed, with the
// errors and the configuration that stays) and an *HTTPError; any other failure (nothing
// listening, a wrong token, an answer that is no verdict) gives a nil verdict.
func (c *Client) Reload(ctx context.Context) (*Reload, error) {
	var out Reload
	err := c.doJSON(ctx, http.MethodPost, PathReload, &out)
	var he *HTTPError
	switch {
	case err == nil:
		return &out, nil
	case errors.As(err, &he) && json.Unmarshal(he.raw, &out) == nil && out.Result == ReloadFailed:
		return &out, err
	}
	return nil, err
}

// Reapply asks POST /api/v1/reapply: apply the running configuration again, reading no file.
func (c *Client) Reapply(ctx context.Context) (*ReloadResult, error) {
	var out ReloadResult
	if err := c.doJSON(ctx, http.MethodPost, PathReapply, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Ready asks GET /readyz; nil means 200. A 503 is an *HTTPError.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, PathReady)
	return err
}
