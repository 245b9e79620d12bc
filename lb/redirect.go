package lb

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// redirectListener is the appliance's "Port 80 Redirector": an HTTP server that answers every
// request with a 302 to the service's URL template.
type redirectListener struct {
	b   *Balancer
	ln  net.Listener
	srv *http.Server
	cur atomic.Pointer[binding]
}

func newRedirectListener(b *Balancer, ln net.Listener) *redirectListener {
	r := &redirectListener{b: b, ln: ln}
	r.srv = &http.Server{
		Handler:           r,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	return r
}

func (r *redirectListener) rebind(bnd *binding) { r.cur.Store(bnd) }

func (r *redirectListener) start() {
	r.b.acceptWG.Add(1)
	go r.serve()
}

// retire lets requests in flight finish; idle keep-alive connections close, which clients
// treat as the normal end of a keep-alive.
func (r *redirectListener) retire() {
	r.b.acceptWG.Add(1)
	go func() {
		defer r.b.acceptWG.Done()
		ctx, cancel := context.WithTimeout(r.b.force, 10*time.Second)
		defer cancel()
		if err := r.srv.Shutdown(ctx); err != nil {
			_ = r.srv.Close()
		}
	}()
}

func (r *redirectListener) abort() { _ = r.srv.Close() }

func (r *redirectListener) serve() {
	defer r.b.acceptWG.Done()
	if err := r.srv.Serve(r.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		r.b.log.Error("redirector stopped", "listener", r.ln.Addr().String(), "err", err)
	}
}

func (r *redirectListener) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	bnd := r.cur.Load()
	st := bnd.svc.stats
	bnd.accepted.accepted.Add(1)
	st.accepted.Add(1)
	client, _ := netip.ParseAddrPort(req.RemoteAddr)
	if !bnd.svc.allowed(client.Addr()) {
		st.drop(DropAccessDenied)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	http.Redirect(w, req, expandRedirect(bnd.svc.cfg.Redirect, req), http.StatusFound)
}

// expandRedirect fills a URL template: %h is the request's Host header, %s its path and query,
// %% a percent sign.
func expandRedirect(template string, req *http.Request) string {
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' || i+1 == len(template) {
			b.WriteByte(c)
			continue
		}
		i++
		switch template[i] {
		case 'h':
			b.WriteString(req.Host)
		case 's':
			b.WriteString(req.URL.RequestURI())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(template[i])
		}
	}
	return b.String()
}
