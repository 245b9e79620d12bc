package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// The functions here turn one written value into its typed form. Their errors are bare
// messages: the caller adds the file, line, field path and value.

var validName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)

// parsePort reads "443/tcp", "3478/udp" or "443/tcp->4443".
func parsePort(s string) (Port, error) {
	listen, target, translated := strings.Cut(s, "->")
	num, proto, ok := strings.Cut(listen, "/")
	if !ok {
		return Port{}, errors.New(`protocol required: write "443/tcp" or "3478/udp"`)
	}
	p := Port{Proto: Proto(proto)}
	if p.Proto != TCP && p.Proto != UDP {
		return Port{}, fmt.Errorf("unknown protocol %q (want tcp or udp)", proto)
	}
	var err error
	if p.Listen, err = portNumber(num); err != nil {
		return Port{}, err
	}
	p.Target = p.Listen
	if translated {
		if p.Target, err = portNumber(target); err != nil {
			return Port{}, err
		}
	}
	return p, nil
}

func portNumber(s string) (uint16, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, errors.New(`malformed port: want "PORT/PROTO" or "PORT/PROTO->TARGET", like "443/tcp->4443"`)
	}
	if n < 1 || n > 65535 {
		return 0, errors.New("port out of range 1-65535")
	}
	return uint16(n), nil
}

// parseAddr reads an address that traffic is sent to or from: a unicast or loopback address of
// one family, with no zone.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, errors.New("not an IP address")
	case a.Zone() != "":
		return netip.Addr{}, errors.New("zones are not supported")
	case a.Is4In6():
		// Kept out so that an address has one family: comparisons and family checks stay simple.
		return netip.Addr{}, fmt.Errorf("IPv4-mapped IPv6 address: write it as %s", a.Unmap())
	case a.IsUnspecified():
		return netip.Addr{}, errors.New("unspecified address not allowed")
	case a.IsMulticast():
		return netip.Addr{}, errors.New("multicast address not allowed")
	}
	return a, nil
}

// parseAddrOptPort reads "10.11.1.12", "10.11.1.12:4443", "2001:db8::1" or "[2001:db8::1]:4443";
// the port is 0 when not given.
func parseAddrOptPort(s string) (netip.Addr, uint16, error) {
	host, port := s, ""
	// One colon is IPv4 with a port; a bracket is IPv6 with a port; more colons are bare IPv6.
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		var err error
		if host, port, err = net.SplitHostPort(s); err != nil {
			return netip.Addr{}, 0, errors.New("want address or address:port, IPv6 with a port as [2001:db8::1]:443")
		}
	}
	a, err := parseAddr(host)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	if port == "" {
		return a, 0, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return netip.Addr{}, 0, errors.New("port out of range 1-65535")
	}
	return a, uint16(n), nil
}

// parseListen reads the admin listener's host:port; unlike a VIP it may be unspecified.
func parseListen(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return netip.AddrPort{}, errors.New("want address:port like 127.0.0.1:9090, IPv6 as [::1]:9090")
	case ap.Addr().Zone() != "":
		return netip.AddrPort{}, errors.New("zones are not supported")
	case ap.Addr().Is4In6() || ap.Addr().IsMulticast():
		return netip.AddrPort{}, errors.New("want a unicast IPv4 or IPv6 address")
	case ap.Port() == 0:
		return netip.AddrPort{}, errors.New("port out of range 1-65535")
	}
	return ap, nil
}

// parsePrefix reads a client network of an access list. A bare address is a single host.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return netip.Prefix{}, errors.New("want a network like 10.0.0.0/8 or an address")
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	pf, err := netip.ParsePrefix(s)
	if err != nil || pf.Addr().Is4In6() {
		return netip.Prefix{}, errors.New("want a network like 10.0.0.0/8 or an address")
	}
	// 10.1.2.3/8 is most likely a typo for a host or for another network: refuse to guess.
	if m := pf.Masked(); m != pf {
		return netip.Prefix{}, fmt.Errorf("host bits set: the network is %s, the host %s", m, pf.Addr())
	}
	return pf, nil
}

// checkRedirect checks a redirector's template: an http(s) URL where %h stands for the request's
// Host header and %s for its path and query.
func checkRedirect(s string) error {
	rest, ok := strings.CutPrefix(s, "https://")
	if !ok {
		rest, ok = strings.CutPrefix(s, "http://")
	}
	if !ok || rest == "" {
		return errors.New("want a URL template starting with http:// or https://, like https://%h%s")
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c <= ' ' || c == 0x7f:
			return errors.New("spaces and control characters are not allowed")
		case c == '%':
			if i+1 < len(s) && (s[i+1] == 'h' || s[i+1] == 's') {
				i++
				continue
			}
			return errors.New("unknown placeholder: only %h (host) and %s (path and query) are allowed")
		}
	}
	return nil
}

// checkURL checks an absolute http(s) URL.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want an http:// or https:// URL")
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
