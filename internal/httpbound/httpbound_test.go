package httpbound

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// TestHTTPErrorLogLimited: net/http's error lines reach slog, one per interval, with a count of
// those left out.
func TestHTTPErrorLogLimited(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	w := &limitedLog{log: slog.New(slog.NewTextHandler(&buf, nil)), name: "redirector", now: func() time.Time { return now }}
	for range 100 {
		fmt.Fprintln(w, "http: URL query contains semicolon")
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Fatalf("%d lines logged for 100 errors within the interval, want 1:\n%s", n, buf.String())
	}
	now = now.Add(LogEvery)
	fmt.Fprintln(w, "http: Accept error: too many open files")
	if !strings.Contains(buf.String(), "suppressed=99") || strings.Count(buf.String(), "\n") != 2 {
		t.Fatalf("after the interval:\n%s", buf.String())
	}
}

// TestLimitHoldsAtMost: a third connection is accepted only once one of the first two closes,
// and a Close ends an Accept waiting for a place.
func TestLimitHoldsAtMost(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Limit(ln, 2, nil)
	accepted := make(chan net.Conn, 3)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first := <-accepted
	<-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted while two were open")
	case <-time.After(200 * time.Millisecond): // the behaviour under test: nothing happens
	}
	first.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the third connection was not accepted once a place freed")
	}
	if l.Peak() != 2 {
		t.Errorf("peak %d, want 2", l.Peak())
	}
	l.Close()
	select {
	case <-acceptErr:
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}
