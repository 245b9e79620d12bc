package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
		return Port{}, fmt.Errorf("unknown protocol %q (want tcp or udp)", short(proto))
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
	if err != nil && s != "" && strings.Trim(s, "0123456789") == "" {
		return 0, errors.New("port out of range 1-65535") // digits only: too many of them
	}
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
	if err := checkUnicast(a); err != nil {
		return netip.Addr{}, err
	}
	return a, nil
}

var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// checkUnicast refuses the addresses that no connection can be sent to or from, whatever the
// network: the limited broadcast (Linux would listen on it and never receive a connection),
// "this network" 0.0.0.0/8 (a source address while booting, never a destination), and IPv6
// link-local addresses, which name an interface only with a zone that the file cannot give.
func checkUnicast(a netip.Addr) error {
	switch {
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("the limited broadcast address: no connection can be made to or from it")
	case thisNetwork.Contains(a):
		return errors.New(`in 0.0.0.0/8 ("this network"): not an address hosts are reached at`)
	case a.Is6() && a.IsLinkLocalUnicast():
		return errors.New("an IPv6 link-local address, which works only with an interface (a zone) the file cannot name: use a global or unique local address")
	}
	return nil
}

// ParseRealServerAddr reads a real server's address as the file writes it: "10.11.1.12",
// "10.11.1.12:4443", "2001:db8::1" or "[2001:db8::1]:4443"; the port is 0 when not given. The
// commands and the admin API read an operator's ADDRESS with it, so that what the file accepts
// and what they accept are one rule.
func ParseRealServerAddr(s string) (netip.Addr, uint16, error) { return parseAddrOptPort(s) }

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
	if !ap.Addr().IsUnspecified() {
		if err := checkUnicast(ap.Addr()); err != nil {
			return netip.AddrPort{}, err
		}
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

// checkRedirect checks a redirect template (redirect, unavailable_redirect): an http(s) URL
// where %h stands for the request's host (its Host header without the port) and %s for its path
// and query. The host part is either %h (optionally with a port) or a fixed host: a template
// without one ("https://%s", "https:///x") sends clients to no host at all.
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
	// The host part ends where the path, the query, the fragment or %s begins.
	end := len(rest)
	for _, sep := range []string{"/", "?", "#", "%s"} {
		if i := strings.Index(rest, sep); i >= 0 && i < end {
			end = i
		}
	}
	return checkRedirectHost(rest[:end])
}

func checkRedirectHost(hp string) error {
	const want = "the host part is either %h (the request's host) or a fixed host, like https://%h%s or https://www.example.com%s"
	if hp == "" || strings.HasPrefix(hp, ":") {
		return errors.New("no host: " + want)
	}
	if strings.Contains(hp, "@") {
		return errors.New("user information (@) is not allowed: " + want)
	}
	host, port := hp, ""
	if rest, ok := strings.CutPrefix(hp, "%h"); ok {
		if rest == "" {
			return nil
		}
		host, port = "", rest
		if !strings.HasPrefix(port, ":") {
			return errors.New("%h stands for the whole host: " + want)
		}
		port = port[1:]
	} else {
		if strings.Contains(hp, "%h") {
			return errors.New("%h stands for the whole host: " + want)
		}
		bracketed := strings.HasPrefix(hp, "[")
		if bracketed || strings.Count(hp, ":") == 1 {
			h, p, err := net.SplitHostPort(hp)
			if bracketed && strings.HasSuffix(hp, "]") {
				h, p, err = hp[1:len(hp)-1], "", nil
			}
			if err != nil {
				return errors.New("want HOST or HOST:PORT, IPv6 in brackets: " + want)
			}
			host, port = h, p
		}
		a, err := netip.ParseAddr(host)
		switch {
		case bracketed && (err != nil || !a.Is6() || a.Zone() != ""):
			return errors.New("want an IPv6 address inside the brackets")
		case err == nil && a.Is6() && !bracketed:
			return fmt.Errorf("an IPv6 address in a URL is written in brackets: [%s]", a)
		case err != nil:
			if err := checkHostName(strings.TrimSuffix(host, "."), false); err != nil {
				return fmt.Errorf("host %q: %w", short(host), err)
			}
		}
	}
	if port == "" && strings.HasSuffix(hp, ":") {
		return errors.New("a colon without a port")
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return errors.New("port out of range 1-65535")
		}
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// Host names: RFC 1123 labels of letters, digits and '-', 1-63 characters, not starting or
// ending with '-', at most 253 characters in all.
const (
	maxHostName = 253
	maxLabel    = 63
)

// checkHostName checks a DNS host name (no port, no trailing dot). Underscores are accepted in
// names that are looked up only (SNI, Host headers): some internal zones use them.
func checkHostName(s string, underscore bool) error {
	if s == "" {
		return errors.New("empty host name")
	}
	if len(s) > maxHostName {
		return fmt.Errorf("a host name has at most %d characters", maxHostName)
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return errors.New("empty label: two dots in a row, or a leading dot")
		}
		if len(label) > maxLabel {
			return fmt.Errorf("label %q is longer than %d characters", short(label), maxLabel)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", short(label))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || (underscore && c == '_')
			if !ok {
				return fmt.Errorf("character %q not allowed in a host name (letters, digits, '-' and '.'; an IDN in its xn-- form)", c)
			}
		}
	}
	return nil
}

// numericTail reports whether the last label of a name is a number, which browsers and URL
// parsers read as (part of) an IPv4 address: "10.1", "0x7f.1".
func numericTail(s string) bool {
	last := s[strings.LastIndexByte(s, '.')+1:]
	if h, ok := strings.CutPrefix(strings.ToLower(last), "0x"); ok {
		_, err := strconv.ParseUint(cmp.Or(h, "0"), 16, 64)
		return err == nil
	}
	return last != "" && strings.Trim(last, "0123456789") == ""
}

// parseAdminHost reads a name of global.admin_hosts, returning it in lower case without a
// trailing dot.
func parseAdminHost(s string) (string, error) {
	switch {
	case strings.Contains(s, "://"):
		return "", errors.New("want a host name, not a URL")
	case strings.Contains(s, "*"):
		return "", errors.New("wildcards are not supported: list each name")
	}
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return "", errors.New("an IP address: IP literals are always accepted, list only names")
	}
	if strings.Contains(s, ":") {
		return "", errors.New("no port: the admin API checks the name only, whatever the port")
	}
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	if err := checkHostName(name, false); err != nil {
		return "", err
	}
	if numericTail(name) {
		return "", errors.New("ends in a number, which browsers read as an IPv4 address: not a host name")
	}
	return name, nil
}

// checkHostHeader checks health.host, the Host header of a check: a host name or an IP address
// (IPv6 in brackets), with an optional port.
func checkHostHeader(s string) error {
	host := s
	bracketed := strings.HasPrefix(s, "[")
	switch {
	case bracketed && strings.HasSuffix(s, "]"):
		host = s[1 : len(s)-1]
	case bracketed || strings.Count(s, ":") == 1:
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return errors.New("want NAME, NAME:PORT, an IP address or [IPv6]:PORT")
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return errors.New("port out of range 1-65535")
		}
		host = h
	}
	a, err := netip.ParseAddr(host)
	switch {
	case bracketed && (err != nil || !a.Is6()):
		return errors.New("want an IPv6 address inside the brackets")
	case err != nil:
		return checkHostName(strings.TrimSuffix(host, "."), true)
	case a.Zone() != "":
		return errors.New("zones are not supported")
	case a.Is6() && !bracketed:
		return fmt.Errorf("an IPv6 address in a Host header is written in brackets: [%s]", a)
	}
	return nil
}

// checkSNI checks health.sni, the TLS server name: a host name (an IP address is allowed: it is
// then checked against the certificate and not sent).
func checkSNI(s string) error {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return errors.New("zones are not supported")
		}
		return nil
	}
	if strings.Contains(s, ":") {
		return errors.New("a TLS server name has no port")
	}
	return checkHostName(strings.TrimSuffix(s, "."), true)
}
