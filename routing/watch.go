package routing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
)

// Run keeps the kernel matching the last configuration given to Set: it watches link, address
// and route changes in the Manager's namespace and re-applies, debounced, after any of them
// (a link going down and up silently empties a table's IPv4 routes), and every resync
// interval. It returns when ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		err := m.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		m.log.Warn("routing watch ended; subscribing again", "error", err, "after", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// watch subscribes to the namespace's changes and re-applies until ctx ends or a subscription
// breaks. It waits for the subscriptions' goroutines before returning.
func (m *Manager) watch(ctx context.Context) error {
	done := make(chan struct{})
	linkCh := make(chan netlink.LinkUpdate, 64)
	addrCh := make(chan netlink.AddrUpdate, 64)
	routeCh := make(chan netlink.RouteUpdate, 256)
	subErr := make(chan error, 3)
	onErr := func(err error) {
		select {
		case subErr <- err:
		default:
		}
	}
	var subscribed []func()
	defer func() {
		close(done)
		for _, wait := range subscribed {
			wait()
		}
	}()
	if err := netlink.LinkSubscribeWithOptions(linkCh, done, netlink.LinkSubscribeOptions{Namespace: m.ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribing to link changes: %w", err)
	}
	subscribed = append(subscribed, drainer(linkCh))
	if err := netlink.AddrSubscribeWithOptions(addrCh, done, netlink.AddrSubscribeOptions{Namespace: m.ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribing to address changes: %w", err)
	}
	subscribed = append(subscribed, drainer(addrCh))
	if err := netlink.RouteSubscribeWithOptions(routeCh, done, netlink.RouteSubscribeOptions{Namespace: m.ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribing to route changes: %w", err)
	}
	subscribed = append(subscribed, drainer(routeCh))

	// The debounce timer is armed by the first event and not pushed back by later ones, so a
	// storm of events still gets a re-apply within one debounce interval.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	arm := func() {
		if !armed {
			timer.Reset(m.debounce)
			armed = true
		}
	}
	resync := time.NewTicker(m.resync)
	defer resync.Stop()
	// While a unit is not installed, a timer re-applies too (a refusal need not come with an
	// event), backing off from a second to the resync interval. A re-apply writes nothing for
	// the units already installed, so it only ever retries the failing ones.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	retryIn, retrying := time.Second, false
	applied := func(ok bool) {
		switch {
		case ok:
			retry.Stop()
			retryIn, retrying = time.Second, false
		case !retrying:
			retry.Reset(retryIn)
			retrying = true
		}
	}

	// Anything may have changed while nobody watched.
	applied(m.reapply())
	if m.watching != nil {
		m.watching()
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			// Possibly a lost event (the receive buffer overflowed): re-apply to be sure. A
			// subscription that ended also closes its channel, handled below.
			m.log.Warn("routing watch", "error", err)
			arm()
		case _, ok := <-linkCh:
			if !ok {
				return errors.New("link subscription closed")
			}
			arm()
		case _, ok := <-addrCh:
			if !ok {
				return errors.New("address subscription closed")
			}
			arm()
		case u, ok := <-routeCh:
			if !ok {
				return errors.New("route subscription closed")
			}
			// Only pairlb's tables matter: the plan is built from links and addresses. A
			// re-apply that finds the kernel matching writes nothing, so pairlb's own changes
			// do not loop.
			if ownsTable(u.Table) {
				arm()
			}
		case <-timer.C:
			armed = false
			applied(m.reapply())
		case <-retry.C:
			retrying = false
			retryIn = min(2*retryIn, max(m.resync, time.Second))
			applied(m.reapply())
		case <-resync.C:
			applied(m.reapply())
		}
	}
}

// drainer returns a function that waits, briefly, for a subscription to close its channel: the
// netlink library closes it when its goroutine ends.
func drainer[T any](ch <-chan T) func() {
	return func() {
		deadline := time.After(2 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-deadline:
				return
			}
		}
	}
}

func (m *Manager) linksChanged(links []Link) {
	if m.onLinks != nil {
		m.onLinks(slices.Clone(links))
	}
}

// reapply applies the last configuration again; it reports whether every unit is installed.
// The problems of units are logged by record when they change; a failure to read the kernel's
// state is logged once until it changes or clears.
func (m *Manager) reapply() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.cfg == nil {
		return true
	}
	links, err := m.Links()
	if err == nil {
		m.linksChanged(links)
		var p Plan
		// The configuration planned without error when Set took it, and what makes a plan
		// fail outright does not depend on the links.
		if p, err = BuildPlan(m.cfg, links); err == nil {
			var probs []Problem
			if probs, err = m.applyUnits(p, links); err == nil {
				if m.lastErr != "" {
					m.log.Info("re-applying routing plan: the kernel's state is readable again")
					m.lastErr = ""
				}
				return len(probs) == 0
			}
		}
	}
	if msg := err.Error(); msg != m.lastErr {
		m.log.Warn("re-applying routing plan", "error", err)
		m.lastErr = msg
	}
	return false
}
