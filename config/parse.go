package config

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Minimum durations: below them a setting cannot do its job. A connect to a server in the same
// data centre takes well under a millisecond, but a loaded box needs a few milliseconds to be
// scheduled at all, and one across a WAN tens: below 10 ms every dial fails and every real
// server looks dead. A health check connects and, for tls and https, completes a handshake,
// which costs a busy Windows server tens of milliseconds: below 100 ms the check measures the
// clock, not the server, and a healthy pool stays down. A drain shorter than 100 ms lets no
// request in flight finish: it is a stop without drain, which is better said by a short value.
const (
	MinDialTimeout    = 10 * time.Millisecond
	MinHealthTimeout  = 100 * time.Millisecond
	MinDrainTimeout   = 100 * time.Millisecond
	MinHealthInterval = time.Second
)

// Limits that only the parser needs.
const (
	maxPersistEntries = 16 << 20
	maxUDPSessions    = 10_000_000
	maxDrainTimeout   = time.Hour
	maxDialTimeout    = 60 * time.Second
	maxHealthInterval = time.Hour
)

var (
	topKeys    = []string{"global", "virtual_services", "pair"}
	globalKeys = []string{"use_default_route_only", "manage_addresses", "admin", "admin_token_file", "admin_hosts",
		"idle_timeout", "drain_timeout", "dial_timeout", "tcp_keepalive", "reset_on_close", "defer_accept", "connection_log"}
	connLogKeys = []string{"to", "format"}
	serviceKeys = []string{"name", "vip", "ports", "default_gateway", "scheduler", "persistence",
		"idle_timeout", "tcp_keepalive", "reset_on_close", "transparent", "subnet_originating",
		"source_addresses", "access", "sorry_server", "health", "close_on_down", "udp",
		"real_servers", "unavailable_redirect", "redirect", "defer_accept"}
	persistenceKeys = []string{"type", "timeout", "max_entries", "place_by"}
	accessKeys      = []string{"allow", "deny"}
	healthKeys      = []string{"type", "port", "method", "path", "host", "sni", "expect", "verify",
		"interval", "timeout", "rise", "fall", "initial"}
	udpKeys        = []string{"idle_timeout", "max_sessions"}
	realServerKeys = []string{"address", "weight", "enabled"}
)

// Load reads and parses the configuration file at path, and reads the files it names (the
// admin token, the VRRP secret) with the same checks, reporting their problems at the line of
// the key that names them.
func Load(path string) (*Config, error) {
	cfg, _, err := LoadHash(path)
	return cfg, err
}

// LoadHash is Load, with the hash of the bytes it read (what Config.Hash would be) even when
// they do not validate: the hash of a rejected file, which a reload reports. It is "" when the
// file could not be read.
func LoadHash(path string) (*Config, string, error) {
	data, _, err := readFile(path, MaxConfigSize)
	if err != nil {
		return nil, "", fmt.Errorf("reading the configuration %s: %w", path, err)
	}
	cfg, err := parse(path, data, true)
	return cfg, hashOf(data), err
}

// HashFile is the Config.Hash that Load would give the file at path as it is now, read with
// Load's checks and bound (a regular file of at most MaxConfigSize) but neither parsed nor
// timed: it blocks as long as the file system does, so that a caller that must answer in time
// runs it on a goroutine of its own, one at a time, and no read is ever left behind by a timeout
// (the daemon's status compares the file with the running configuration so).
func HashFile(path string) (string, error) {
	data, _, err := readRegular(path, MaxConfigSize)
	if err != nil {
		return "", fmt.Errorf("reading the configuration %s: %w", path, err)
	}
	return hashOf(data), nil
}

// LoadAdmin reads from the configuration file at path only what a command needs to reach the
// pairlb that runs it: global.admin (DefaultAdmin when absent) and the token of
// global.admin_token_file (nil without one), with Load's checks of those two keys and of the
// file's syntax. The rest of the file is not looked at: `pairlb reload` must ask the running
// pairlb about a file that does not validate, and `pairlb status` keep working while it does
// not.
func LoadAdmin(path string) (netip.AddrPort, []byte, error) {
	data, _, err := readFile(path, MaxConfigSize)
	if err != nil {
		return netip.AddrPort{}, nil, fmt.Errorf("reading the configuration %s: %w", path, err)
	}
	p := &parser{file: path, files: true}
	var g Global
	read, global := false, true
	if root := p.document(data); root != nil {
		if f, ok := p.mapping(root, "", topKeys...); ok {
			read = true
			n := f.vals["global"]
			global = n == nil || n.Kind == yaml.MappingNode
			g = p.global(p.section(f, "global", globalKeys...))
		}
	}
	// The problems that leave the address or the token unknown: any when the file could not be
	// read as a YAML mapping, else those of the two keys, and global's when it is not a mapping.
	// An unknown key beside them, or any other mistake, is the daemon's to report.
	errs := p.errs.final(path, "errors")
	if read {
		errs = slices.DeleteFunc(errs, func(e *FieldError) bool {
			return e.Path != "global.admin" && e.Path != "global.admin_token_file" && (global || e.Path != "global")
		})
	}
	if len(errs) > 0 {
		return netip.AddrPort{}, nil, errs
	}
	return g.Admin, g.AdminToken, nil
}

// hashOf is Config.Hash for a file's bytes.
func hashOf(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Parse decodes, types, completes and validates the configuration in data; file names it in
// messages and becomes Config.Path. On any problem it returns Errors holding every problem found
// (the first MaxReported by line), in the order of the file. It reads no other file: the files
// the configuration names are read by Load.
func Parse(file string, data []byte) (*Config, error) {
	return parse(file, data, false)
}

func parse(file string, data []byte, files bool) (*Config, error) {
	p := &parser{file: file, files: files}
	cfg := &Config{Path: file, Hash: hashOf(data)}
	if root := p.document(data); root != nil {
		p.config(root, cfg)
	}
	if errs := p.errs.final(file, "errors"); len(errs) > 0 {
		return nil, errs
	}
	cfg.Warnings = p.warns.final(file, "warnings")
	return cfg, nil
}

// yamlLine finds the line in the YAML library's syntax errors, which carry it only in their text.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// maxAliasExpansion is how many values aliases may add to those the file writes. Anchors are
// welcome (one pool of Front Ends for several services), but a few lines of nested aliases can
// otherwise stand for billions of values.
const maxAliasExpansion = 100_000

// maxYAMLKey is the longest plain key YAML reads; maxLine the longest line of a file. The
// longest line of the Lync example is under 120 bytes, and an access list of 1,000 networks
// written on one line under 20 KiB.
const (
	maxYAMLKey = 1024
	maxLine    = 64 << 10
)

// document is the root node of the file's single YAML document, nil when there is none.
func (p *parser) document(data []byte) *yaml.Node {
	// The YAML library reports text that is not UTF-8 or holds control characters without a
	// line; find it first, with one.
	if line, col, msg := checkText(data); msg != "" {
		p.errs.add(&FieldError{File: p.file, Line: line, Msg: fmt.Sprintf("column %d: %s", col, msg)})
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		p.fail(nil, "", "", "empty file: want global and virtual_services")
		return nil
	}
	if err != nil {
		p.syntax(err, data)
		return nil
	}
	root := deref(doc.Content[0])
	if isNull(root) {
		p.fail(root, "", "", "empty document: want global and virtual_services")
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		p.fail(&next, "", "", "a second YAML document: the file must hold exactly one")
	} else if !errors.Is(err, io.EOF) {
		p.syntax(err, data)
	}
	if !p.aliasesBounded(&doc) {
		return nil
	}
	return root
}

// aliasesBounded reports whether the aliases of doc expand it by at most maxAliasExpansion
// values, and reports the problem when they do not. The sizes are memoised per node, so that
// the check itself is linear in the size of the file.
func (p *parser) aliasesBounded(doc *yaml.Node) bool {
	const saturated = 1 << 40
	sizes := map[*yaml.Node]int{}
	var size func(n *yaml.Node) int
	size = func(n *yaml.Node) int {
		if n.Kind == yaml.AliasNode {
			if n.Alias == nil {
				return 1
			}
			return size(n.Alias)
		}
		if s, ok := sizes[n]; ok {
			return s
		}
		sizes[n] = 1 // a node containing itself (the library refuses it) counts once
		s := 1
		for _, c := range n.Content {
			s = min(s+size(c), saturated)
		}
		sizes[n] = s
		return s
	}
	expanded := size(doc)
	written := 0
	var worst *yaml.Node
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		written++
		if n.Kind == yaml.AliasNode {
			if n.Alias != nil && (worst == nil || size(n.Alias) > size(worst.Alias)) {
				worst = n
			}
			return
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(doc)
	if worst == nil || expanded-written <= maxAliasExpansion {
		return true
	}
	p.fail(worst, "", "*"+worst.Value, "aliases expand the file by %s values (at most %s): write the values out or use fewer nested aliases",
		expandedCount(expanded-written, saturated), groupDigits(maxAliasExpansion))
	return false
}

func expandedCount(n, saturated int) string {
	if n >= saturated-1_000_000 {
		return "more than " + groupDigits(int64(saturated))
	}
	return groupDigits(int64(n))
}

// maxSyntaxMsg bounds a message of the YAML library, which may quote the file (an anchor name).
const maxSyntaxMsg = 200

func (p *parser) syntax(err error, data []byte) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if line > 0 && (strings.HasPrefix(msg, "mapping values are not allowed") || strings.HasPrefix(msg, "could not find expected ':'")) {
		// A plain key longer than YAML allows reads as a value followed by a stray colon.
		if k := keyLength(lineOf(data, line)); k > maxYAMLKey {
			msg = fmt.Sprintf("a key of %s characters: YAML reads at most %d in a key, and pairlb knows no key that long", groupDigits(int64(k)), maxYAMLKey)
		}
	}
	name, unknownAnchor := strings.CutPrefix(msg, "unknown anchor '")
	switch {
	case unknownAnchor && line == 0:
		name = strings.TrimSuffix(name, "' referenced")
		line = aliasLine(data, name)
		msg = fmt.Sprintf("alias *%s names no anchor (&%s) written before it", short(name), short(name))
	case line == 0:
		// The library leaves the line out when the problem is on the first one (its marks
		// count from 0, and 0 reads as "none").
		line = 1
	}
	msg = cut(msg, maxSyntaxMsg)
	p.errs.add(&FieldError{File: p.file, Line: line, Msg: "invalid YAML: " + msg})
}

// lineOf is line n (1-based) of data.
func lineOf(data []byte, n int) []byte {
	for i := 1; i < n; i++ {
		j := bytes.IndexByte(data, '\n')
		if j < 0 {
			return nil
		}
		data = data[j+1:]
	}
	if j := bytes.IndexByte(data, '\n'); j >= 0 {
		data = data[:j]
	}
	return data
}

// keyLength is the length of the key a line starts with, 0 when it has none.
func keyLength(line []byte) int {
	line = bytes.TrimLeft(line, " ")
	for bytes.HasPrefix(line, []byte("- ")) {
		line = bytes.TrimLeft(line[2:], " ")
	}
	return max(bytes.Index(line, []byte(": ")), bytes.Index(line, []byte(":\r")), 0)
}

// aliasLine is the line of the first alias *name in data, 0 when none is found.
func aliasLine(data []byte, name string) int {
	ref := []byte("*" + name)
	for off := 0; ; {
		i := bytes.Index(data[off:], ref)
		if i < 0 {
			return 0
		}
		end := off + i + len(ref)
		if end == len(data) || strings.IndexByte(" \t\r\n,]}", data[end]) >= 0 {
			return bytes.Count(data[:off+i], []byte("\n")) + 1
		}
		off = end
	}
}

// checkText finds the first character that makes data something other than YAML text: bytes
// that are not UTF-8, or control characters other than tab, CR and LF (YAML's printable set).
// It returns its line and column (1-based) and what is wrong, or an empty message.
func checkText(data []byte) (line, col int, msg string) {
	if bytes.HasPrefix(data, []byte{0xff, 0xfe}) || bytes.HasPrefix(data, []byte{0xfe, 0xff}) {
		return 1, 1, "UTF-16 text: save the file as UTF-8"
	}
	line, col = 1, 1
	start := 0 // of the line
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			return line, col, fmt.Sprintf("byte 0x%02x is not UTF-8 text: the file must be YAML text, in UTF-8", data[i])
		case i-start >= maxLine:
			end := bytes.IndexByte(data[i:], '\n')
			if end < 0 {
				end = len(data) - i
			}
			return line, 1, fmt.Sprintf("a line of %s bytes, at most %s: no setting needs one; write long lists one item a line", groupDigits(int64(i+end-start)), groupDigits(maxLine))
		case r == '\n':
			line, col, start = line+1, 0, i+1
		case r == '\t' || r == '\r' || r == 0x85:
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0xfffe || r == 0xffff || (r == 0xfeff && i > 0):
			name := ""
			if r == 0 {
				name = " (NUL)"
			}
			return line, col, fmt.Sprintf("control character %U%s: the file must be YAML text (binary data, or a value needing an escape in double quotes)", r, name)
		}
		i += n
		col++
	}
	return 0, 0, ""
}

// spot is where a value was written.
type spot struct {
	node *yaml.Node
	path string
}

// placed remembers where a service's values were written, for the checks that tie values
// together. A node is nil when the value was absent or invalid (and then already reported).
type placed struct {
	name       *yaml.Node
	vip        *yaml.Node
	gateway    *yaml.Node
	badGateway bool   // given but invalid: leave it out of the checks across services
	ports      []spot // one per VirtualService.Ports entry
	sources    []spot // one per VirtualService.SourceAddresses entry
	servers    []spot // one per VirtualService.RealServers entry, the address
	sorry      *yaml.Node
}

func (p *parser) config(root *yaml.Node, cfg *Config) {
	f, ok := p.mapping(root, "", topKeys...)
	if !ok {
		return
	}
	cfg.Global = p.global(p.section(f, "global", globalKeys...))

	items := p.list(f, "virtual_services")
	if n := f.vals["virtual_services"]; n == nil || (n.Kind == yaml.SequenceNode && len(items) == 0) {
		p.fail(cmp.Or(n, root), "virtual_services", "", "at least one virtual service is required")
	}
	var where []placed
	for i, item := range items {
		vs, at := p.service(item, index("virtual_services", i), cfg.Global)
		cfg.VirtualServices = append(cfg.VirtualServices, vs)
		where = append(where, at)
	}
	p.across(cfg, where)
	p.loops(cfg, where)
	if n := f.vals["pair"]; n != nil {
		cfg.Pair = p.pair(n, f, cfg, where)
	}
}

func (p *parser) global(f fields) Global {
	g := Global{
		UseDefaultRouteOnly: p.boolean(f, "use_default_route_only", false),
		ManageAddresses:     p.boolean(f, "manage_addresses", false),
		Admin:               netip.MustParseAddrPort(DefaultAdmin),
		IdleTimeout:         p.idleTimeout(f, "idle_timeout", DefaultIdleTimeout),
		DrainTimeout:        p.duration(f, "drain_timeout", DefaultDrainTimeout, MinDrainTimeout, maxDrainTimeout),
		DialTimeout:         p.duration(f, "dial_timeout", DefaultDialTimeout, MinDialTimeout, maxDialTimeout),
		TCPKeepalive:        p.boolean(f, "tcp_keepalive", true),
		ResetOnClose:        p.boolean(f, "reset_on_close", false),
		DeferAccept:         p.boolean(f, "defer_accept", false),
		AdminHosts:          p.adminHosts(f),
	}
	if n := p.scalar(f, "admin"); n != nil {
		if ap, err := parseListen(n.Value); err != nil {
			p.bad(n, f.at("admin"), "%v", err)
		} else {
			g.Admin = ap
		}
	}
	if n := p.scalar(f, "admin_token_file"); n != nil {
		g.AdminTokenFile = n.Value
		p.namedFile(n, f.at("admin_token_file"))
		if p.files {
			tok, mode, err := readAdminToken(n.Value)
			if err != nil {
				p.bad(n, f.at("admin_token_file"), "%v", err)
			} else {
				g.AdminToken = tok
				p.secretMode(n, f.at("admin_token_file"), mode)
			}
		}
	}
	if f.has("connection_log") {
		g.ConnectionLog = p.connectionLog(p.section(f, "connection_log", connLogKeys...))
	}
	if n := f.vals["admin"]; n != nil && !f.has("admin_token_file") && !g.Admin.Addr().IsLoopback() {
		switch {
		case g.Admin.Addr().IsUnspecified():
			// Go listens dual-stack on a wildcard: 0.0.0.0 takes IPv6 too, :: takes IPv4.
			p.warn(n, f.at("admin"), n.Value, "the admin API listens on every address of the box, IPv4 and IPv6 alike (a wildcard listener is dual-stack), without a token: anyone who reaches the box can drain servers and reload; set admin_token_file, or listen on 127.0.0.1")
		default:
			p.warn(n, f.at("admin"), n.Value, "the admin API listens on a network address without a token: anyone who reaches it can drain servers and reload; set admin_token_file")
		}
	}
	return g
}

// connectionLog reads where the connection log goes and its format. A file's path must be
// absolute (the daemon runs in /), and Load checks that pairlb may append to it, as run and
// every reload will: validate then finds what would refuse the start.
func (p *parser) connectionLog(f fields) ConnectionLog {
	c := ConnectionLog{Format: ConnLogText}
	if n := p.required(f, "to"); n != nil {
		switch v := n.Value; {
		case v == ConnLogStderr || v == ConnLogSyslog:
			c.To = v
		case !filepath.IsAbs(v):
			p.bad(n, f.at("to"), "want stderr, syslog or the absolute path of a file")
		default:
			if p.files {
				if err := checkLogFile(v); err != nil {
					p.bad(n, f.at("to"), "%v", err)
					break
				}
			}
			c.To = v
		}
	}
	if n := p.scalar(f, "format"); n != nil {
		switch v := ConnLogFormat(n.Value); v {
		case ConnLogText, ConnLogJSON:
			c.Format = v
		default:
			p.bad(n, f.at("format"), "unknown format (want text or json)")
		}
	}
	if c.To == "" {
		return ConnectionLog{}
	}
	return c
}

// namedFile checks the name of a file the configuration names.
func (p *parser) namedFile(n *yaml.Node, path string) {
	if !filepath.IsAbs(n.Value) {
		p.warn(n, path, n.Value, "a relative path is read from the working directory of each process that reads it (systemd and keepalived's scripts run in /): write it absolute")
	}
}

// secretMode warns about a secret that others may read.
func (p *parser) secretMode(n *yaml.Node, path string, mode fs.FileMode) {
	if mode&0o077 != 0 {
		p.warn(n, path, n.Value, "readable by group or others (mode %s): chmod 600 it", mode)
	}
}

// adminHosts reads the host names the admin API answers besides IP addresses and names of
// loopback. They are kept in lower case without a trailing dot, the form a Host header is
// compared in.
func (p *parser) adminHosts(f fields) []string {
	var out []string
	seen := map[string]int{}
	for i, n := range p.list(f, "admin_hosts") {
		path := index(f.at("admin_hosts"), i)
		if !p.listItem(n, path) {
			continue
		}
		name, err := parseAdminHost(n.Value)
		switch {
		case err != nil:
			p.bad(n, path, "%v", err)
		case seen[name] != 0:
			p.bad(n, path, "listed twice, first at line %d", seen[name])
		default:
			seen[name] = n.Line
			out = append(out, name)
		}
	}
	return out
}

// service reads one virtual service, resolving what it inherits from g, and checks the rules
// that involve only this service.
func (p *parser) service(node *yaml.Node, path string, g Global) (VirtualService, placed) {
	var vs VirtualService
	var at placed
	f, ok := p.mapping(node, path, serviceKeys...)
	if !ok {
		return vs, at
	}

	if n := p.required(f, "name"); n != nil {
		if validName.MatchString(n.Value) {
			vs.Name, at.name = n.Value, n
		} else {
			p.bad(n, f.at("name"), "want 1-63 letters, digits, '.', '_' or '-'")
		}
	}
	if n := p.required(f, "vip"); n != nil {
		if a, err := parseAddr(n.Value); err != nil {
			p.bad(n, f.at("vip"), "%v", err)
		} else {
			vs.VIP, at.vip = a, n
		}
	}
	p.ports(f, &vs, &at)
	if n := p.scalar(f, "default_gateway"); n != nil {
		a, err := parseAddr(n.Value)
		at.badGateway = true
		switch {
		case err != nil:
			p.bad(n, f.at("default_gateway"), "%v", err)
		case vs.VIP.IsValid() && a.Is4() != vs.VIP.Is4():
			p.bad(n, f.at("default_gateway"), "%s gateway for %s VIP %s", family(a), family(vs.VIP), vs.VIP)
		case a == vs.VIP:
			p.bad(n, f.at("default_gateway"), "the gateway cannot be the VIP itself")
		case a.IsLinkLocalUnicast():
			// The box's link-local subnets are no connected subnet a gateway can be found on.
			p.bad(n, f.at("default_gateway"), "a link-local gateway: use the router's address on the VIP's subnet")
		case a.IsLoopback():
			p.bad(n, f.at("default_gateway"), "a loopback gateway: use the router's address on the VIP's subnet")
		default:
			vs.DefaultGateway, at.gateway, at.badGateway = a, n, false
		}
	}
	vs.Scheduler = LeastConn
	if n := p.scalar(f, "scheduler"); n != nil {
		if s := Scheduler(n.Value); slices.Contains(Schedulers, s) {
			vs.Scheduler = s
		} else {
			p.bad(n, f.at("scheduler"), "unknown scheduler (want one of %s)", joinNames(Schedulers))
		}
	}
	vs.Persistence = p.persistence(p.section(f, "persistence", persistenceKeys...))
	p.placement(f, &vs)
	vs.IdleTimeout = p.idleTimeout(f, "idle_timeout", g.IdleTimeout)
	vs.TCPKeepalive = p.boolean(f, "tcp_keepalive", g.TCPKeepalive)
	vs.ResetOnClose = p.boolean(f, "reset_on_close", g.ResetOnClose)
	vs.Transparent = p.boolean(f, "transparent", false)
	vs.SubnetOriginating = p.boolean(f, "subnet_originating", false)
	vs.CloseOnDown = p.boolean(f, "close_on_down", false)
	// The global default reaches the services it can apply to; a service that asks for it
	// where it cannot apply is told so.
	hasTCP := slices.ContainsFunc(vs.Ports, func(pt Port) bool { return pt.Proto == TCP })
	vs.DeferAccept = p.boolean(f, "defer_accept", g.DeferAccept && hasTCP && !f.has("redirect"))
	if n := f.vals["defer_accept"]; vs.DeferAccept {
		switch {
		case f.has("redirect"):
			p.bad(n, f.at("defer_accept"), "not for a redirector")
		case !hasTCP:
			p.bad(n, f.at("defer_accept"), "applies to TCP ports; this service has none")
		}
	}
	p.sourceAddresses(f, &vs, &at)
	vs.Access = p.access(p.section(f, "access", accessKeys...))
	if n := p.scalar(f, "sorry_server"); n != nil {
		if a, port, err := parseAddrOptPort(n.Value); err != nil {
			p.bad(n, f.at("sorry_server"), "%v", err)
		} else {
			vs.SorryServer, at.sorry = netip.AddrPortFrom(a, port), n
		}
	}
	// A redirector has no servers to probe; any other service gets a TCP connect by default.
	defaultCheck := HealthTCP
	if f.has("redirect") {
		defaultCheck = HealthNone
	}
	vs.Health = p.health(p.section(f, "health", healthKeys...), defaultCheck)
	udp := p.section(f, "udp", udpKeys...)
	vs.UDPIdleTimeout = p.duration(udp, "idle_timeout", DefaultUDPIdleTimeout, time.Second, MaxIdleTimeout)
	vs.UDPMaxSessions = p.integer(udp, "max_sessions", DefaultUDPMaxSessions, 1, maxUDPSessions)
	p.realServers(f, &vs, &at)
	if n := p.scalar(f, "unavailable_redirect"); n != nil {
		if err := checkRedirect(n.Value); err != nil {
			p.bad(n, f.at("unavailable_redirect"), "%v", err)
		} else {
			vs.UnavailableRedirect = n.Value
		}
	}
	if n := p.scalar(f, "redirect"); n != nil {
		if err := checkRedirect(n.Value); err != nil {
			p.bad(n, f.at("redirect"), "%v", err)
		} else {
			vs.Redirect = n.Value
		}
	}

	if f.has("redirect") {
		p.redirector(f, &vs, &at)
	} else if n := f.vals["real_servers"]; n == nil || (n.Kind == yaml.SequenceNode && len(n.Content) == 0) {
		p.fail(cmp.Or(n, node), f.at("real_servers"), "", "at least one real server is required (or redirect, for a redirector)")
	}
	p.addressing(f, &vs, &at)
	return vs, at
}

// ports reads the service's ports; a port repeated within the service is found by across.
func (p *parser) ports(f fields, vs *VirtualService, at *placed) {
	if !f.has("ports") {
		p.fail(f.node, f.at("ports"), "", "required: at least one port like \"443/tcp\"")
		return
	}
	items := p.list(f, "ports")
	if f.vals["ports"].Kind == yaml.SequenceNode && len(items) == 0 {
		p.fail(f.vals["ports"], f.at("ports"), "", "at least one port is required")
	}
	for i, n := range items {
		path := index(f.at("ports"), i)
		if !p.listItem(n, path) {
			continue
		}
		port, err := parsePort(n.Value)
		if err != nil {
			p.bad(n, path, "%v", err)
			continue
		}
		vs.Ports = append(vs.Ports, port)
		at.ports = append(at.ports, spot{n, path})
	}
}

func (p *parser) persistence(f fields) Persistence {
	ps := Persistence{
		Type:       "none",
		PlaceBy:    PlaceByHash,
		Timeout:    p.duration(f, "timeout", DefaultPersistTimeout, time.Second, MaxIdleTimeout),
		MaxEntries: p.integer(f, "max_entries", DefaultPersistEntries, 1, maxPersistEntries),
	}
	if n := p.scalar(f, "type"); n != nil {
		if n.Value == "none" || n.Value == "source-ip" {
			ps.Type = n.Value
		} else {
			p.bad(n, f.at("type"), "unknown persistence type (want none or source-ip)")
		}
	}
	if n := p.scalar(f, "place_by"); n != nil {
		switch pb := PlaceBy(n.Value); {
		case pb != PlaceByHash && pb != PlaceByScheduler:
			p.bad(n, f.at("place_by"), "want hash (a consistent hash of the client's address, the same on both boxes) or scheduler (the service's scheduler)")
		case !ps.Enabled():
			p.bad(n, f.at("place_by"), "only with type: source-ip: without persistence the scheduler places every connection")
		default:
			ps.PlaceBy = pb
		}
	}
	return ps
}

// placement warns when the file writes a scheduler that persistence keeps from being used.
func (p *parser) placement(f fields, vs *VirtualService) {
	n := f.vals["scheduler"]
	if n == nil || vs.Placement() != PlacementHash || vs.Scheduler == SourceHash {
		return // source-hash is a consistent hash of the client's address too
	}
	p.warn(n, f.at("scheduler"), n.Value, "does not apply: with persistence source-ip a new client is placed by a consistent hash of its address (place_by: hash, the default), so that both boxes of a pair place it alike; "+
		"to place new clients by %s write persistence: {..., place_by: scheduler}, at the cost that after a failover the other box, which has no table entry for them, places returning clients anew and may send them to another server; or drop the scheduler line", vs.Scheduler)
}

func (p *parser) sourceAddresses(f fields, vs *VirtualService, at *placed) {
	seen := map[netip.Addr]int{}
	for i, n := range p.list(f, "source_addresses") {
		path := index(f.at("source_addresses"), i)
		if !p.listItem(n, path) {
			continue
		}
		a, err := parseAddr(n.Value)
		switch {
		case err != nil:
			p.bad(n, path, "%v", err)
		case seen[a] != 0:
			p.bad(n, path, "listed twice, first at line %d", seen[a])
		default:
			seen[a] = n.Line
			vs.SourceAddresses = append(vs.SourceAddresses, a)
			at.sources = append(at.sources, spot{n, path})
		}
	}
}

func (p *parser) access(f fields) Access {
	return Access{Allow: p.prefixes(f, "allow"), Deny: p.prefixes(f, "deny")}
}

func (p *parser) prefixes(f fields, key string) []netip.Prefix {
	var out []netip.Prefix
	for i, n := range p.list(f, key) {
		path := index(f.at(key), i)
		if !p.listItem(n, path) {
			continue
		}
		if pf, err := parsePrefix(n.Value); err != nil {
			p.bad(n, path, "%v", err)
		} else {
			out = append(out, pf)
		}
	}
	return out
}

func (p *parser) health(f fields, def HealthType) Health {
	h := Health{
		Type:     def,
		Port:     uint16(p.integer(f, "port", 0, 0, 65535)),
		Method:   "GET",
		Path:     "/",
		Verify:   p.boolean(f, "verify", false),
		Interval: p.duration(f, "interval", DefaultHealthInterval, MinHealthInterval, maxHealthInterval),
		Rise:     p.integer(f, "rise", DefaultHealthRise, 1, 100),
		Fall:     p.integer(f, "fall", DefaultHealthFall, 1, 100),
	}
	if n := p.scalar(f, "type"); n != nil {
		if t := HealthType(n.Value); slices.Contains(HealthTypes, t) {
			h.Type = t
		} else {
			p.bad(n, f.at("type"), "unknown health type (want one of %s)", joinNames(HealthTypes))
		}
	}
	// The host and the server name go into a request header and a TLS hello: a value that
	// cannot be sent makes every check fail and the pool stay down.
	if n := p.scalar(f, "host"); n != nil {
		if err := checkHostHeader(n.Value); err != nil {
			p.bad(n, f.at("host"), "%v", err)
		} else {
			h.Host = n.Value
		}
	}
	if n := p.scalar(f, "sni"); n != nil {
		if err := checkSNI(n.Value); err != nil {
			p.bad(n, f.at("sni"), "%v", err)
		} else {
			h.SNI = n.Value
		}
	}
	if n := f.vals["host"]; h.SNI == "" && h.Host != "" && (h.Type == HealthTLS || h.Type == HealthHTTPS) {
		if host, _, err := net.SplitHostPort(h.Host); err == nil {
			p.bad(n, f.at("host"), "the host is also the TLS server name when sni is not set, and a server name has no port: add sni: %s", strings.Trim(host, "[]"))
		}
	}
	// A short interval brings the default timeout down with it rather than making it an error.
	h.Timeout = p.duration(f, "timeout", min(DefaultHealthTimeout, h.Interval), MinHealthTimeout, maxHealthInterval)
	if n := f.vals["timeout"]; n != nil && h.Timeout > h.Interval {
		p.bad(n, f.at("timeout"), "longer than the interval (%s): a check would still run when the next starts", seconds(h.Interval))
	}
	if n := p.scalar(f, "method"); n != nil {
		if isToken(n.Value) {
			h.Method = n.Value
		} else {
			p.bad(n, f.at("method"), "want an HTTP method like GET or HEAD")
		}
	}
	if n := p.scalar(f, "path"); n != nil {
		switch {
		case !strings.HasPrefix(n.Value, "/"):
			p.bad(n, f.at("path"), "want a path starting with /")
		case strings.ContainsAny(n.Value, " #"):
			p.bad(n, f.at("path"), "spaces and '#' cannot be sent in a request line: write them %%20 and %%23")
		default:
			h.Path = n.Value
		}
	}
	for i, n := range p.list(f, "expect") {
		path := index(f.at("expect"), i)
		if !p.listItem(n, path) {
			continue
		}
		code, err := strconv.Atoi(n.Value)
		if err != nil || code < 100 || code > 599 {
			p.bad(n, path, "want an HTTP status code 100-599")
			continue
		}
		h.Expect = append(h.Expect, code)
	}
	if n := p.scalar(f, "initial"); n != nil {
		switch n.Value {
		case "up":
			h.InitialUp = true
		case "down":
		default:
			p.bad(n, f.at("initial"), "want up or down")
		}
	}

	return h
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

func (p *parser) realServers(f fields, vs *VirtualService, at *placed) {
	seen := map[string]int{}
	for i, n := range p.list(f, "real_servers") {
		path := index(f.at("real_servers"), i)
		rf, ok := p.mapping(n, path, realServerKeys...)
		if !ok {
			continue
		}
		rs := RealServer{
			Weight:  p.integer(rf, "weight", 1, 1, MaxWeight),
			Enabled: p.boolean(rf, "enabled", true),
		}
		an := p.required(rf, "address")
		if an == nil {
			continue
		}
		var err error
		if rs.Address, rs.Port, err = parseAddrOptPort(an.Value); err != nil {
			p.bad(an, rf.at("address"), "%v", err)
			continue
		}
		if line := seen[rs.Key()]; line != 0 {
			p.bad(an, rf.at("address"), "real server listed twice, first at line %d", line)
			continue
		}
		seen[rs.Key()] = an.Line
		if rs.Port != 0 && len(vs.Ports) > 1 {
			p.bad(an, rf.at("address"), "a real-server port is ambiguous in a service with %d ports: drop it and translate on the service port instead (\"443/tcp->4443\")", len(vs.Ports))
		}
		vs.RealServers = append(vs.RealServers, rs)
		at.servers = append(at.servers, spot{an, rf.at("address")})
	}
}

// redirector checks that a redirect service carries nothing a redirector cannot use.
func (p *parser) redirector(f fields, vs *VirtualService, at *placed) {
	for _, key := range []string{"real_servers", "sorry_server", "health", "unavailable_redirect"} {
		if n := f.vals[key]; n != nil {
			p.fail(n, f.at(key), n.Value, "not allowed with redirect: a redirector answers every request itself")
		}
	}
	for i, port := range vs.Ports {
		if port.Proto != TCP {
			p.bad(at.ports[i].node, at.ports[i].path, "a redirector answers HTTP, which needs tcp ports")
		}
	}
}

// addressing checks the rules that tie the service's addresses together.
func (p *parser) addressing(f fields, vs *VirtualService, at *placed) {
	if vs.Transparent {
		if n := f.vals["source_addresses"]; n != nil && len(vs.SourceAddresses) > 0 {
			p.fail(n, f.at("source_addresses"), "", "not allowed with transparent: true, which connects from the client's own address")
		}
		if n := f.vals["subnet_originating"]; n != nil && vs.SubnetOriginating {
			p.bad(n, f.at("subnet_originating"), "not allowed with transparent: true, which connects from the client's own address")
		}
		// The real server sees the client's address, which is of the VIP's family.
		for i, rs := range vs.RealServers {
			if vs.VIP.IsValid() && rs.Address.Is4() != vs.VIP.Is4() {
				p.bad(at.servers[i].node, at.servers[i].path, "%s real server behind %s VIP %s: transparency needs one family", family(rs.Address), family(vs.VIP), vs.VIP)
			}
		}
	}
	// The first real server of each family is enough to tell a source address it cannot serve.
	var first4, first6 *RealServer
	for i := range vs.RealServers {
		rs := &vs.RealServers[i]
		if rs.Address.Is4() && first4 == nil {
			first4 = rs
		} else if rs.Address.Is6() && first6 == nil {
			first6 = rs
		}
	}
	for i, a := range vs.SourceAddresses {
		other := first4
		if a.Is4() {
			other = first6
		}
		if other != nil {
			p.bad(at.sources[i].node, at.sources[i].path, "%s source address for %s real server %s", family(a), family(other.Address), other.Key())
		}
	}
}

// across checks the rules that involve several services: unique names, one owner per listening
// address, one gateway per VIP, and the admin listener kept apart.
func (p *parser) across(cfg *Config, where []placed) {
	names := map[string]spot{}
	type listener struct {
		vip   netip.Addr
		proto Proto
		port  uint16
	}
	type owner struct {
		service int
		line    int
	}
	listeners := map[listener]owner{}
	gateways := map[netip.Addr]int{} // VIP to the first service on it
	admin := cfg.Global.Admin

	for i := range cfg.VirtualServices {
		vs, at := &cfg.VirtualServices[i], where[i]
		path := index("virtual_services", i)
		if at.name != nil {
			if first, ok := names[vs.Name]; ok {
				p.bad(at.name, path+".name", "duplicate name, first used by %s (line %d)", first.path, first.node.Line)
			} else {
				names[vs.Name] = spot{at.name, path}
			}
		}
		if at.vip == nil {
			continue
		}
		for j, port := range vs.Ports {
			l := listener{vs.VIP, port.Proto, port.Listen}
			n := at.ports[j].node
			if o, ok := listeners[l]; ok && o.service == i {
				p.bad(n, at.ports[j].path, "port %d/%s listed twice (line %d)", port.Listen, port.Proto, o.line)
				continue
			} else if ok {
				other := cmp.Or(cfg.VirtualServices[o.service].Name, index("virtual_services", o.service))
				p.bad(n, at.ports[j].path, "%s/%s is already used by %s (line %d)", netip.AddrPortFrom(vs.VIP, port.Listen), port.Proto, other, o.line)
				continue
			}
			listeners[l] = owner{i, n.Line}
			// An unspecified admin address listens on every address of the box, VIPs included.
			if port.Proto == TCP && port.Listen == admin.Port() && (admin.Addr() == vs.VIP || admin.Addr().IsUnspecified()) {
				p.bad(n, at.ports[j].path, "collides with the admin listener %s (global.admin)", admin)
			}
		}
		// The routing manager gives each VIP one rule and table: services sharing a VIP must
		// agree on the gateway their replies leave through.
		if at.badGateway {
			continue
		}
		if first, ok := gateways[vs.VIP]; !ok {
			gateways[vs.VIP] = i
		} else if other := &cfg.VirtualServices[first]; other.DefaultGateway != vs.DefaultGateway {
			p.fail(cmp.Or(at.gateway, at.vip), path+".default_gateway", gatewayName(vs.DefaultGateway),
				"services on VIP %s must share one default gateway: %s uses %s",
				vs.VIP, cmp.Or(other.Name, index("virtual_services", first)), gatewayName(other.DefaultGateway))
		}
	}
}

func gatewayName(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

func joinNames[T ~string](names []T) string {
	s := make([]string, len(names))
	for i, n := range names {
		s[i] = string(n)
	}
	return strings.Join(s, ", ")
}
