package daemon

import (
	"bytes"
	"reflect"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
)

// What a reload changed, for its log line and its answer (`pairlb reload`). Every field of the
// configuration is compared, through the tables below, which name each field by the key the
// file writes it with; TestChangesCoverEveryField fails when a field of config is in no table,
// so that a setting added to the file can never change silently ("nothing changed").
//
// Order is not a change: services and real servers are matched by name and key, and what the
// balancer does with them does not depend on their place in the file.

// fieldKey maps a field of a config struct to the key of the file that sets it.
type fieldKey struct{ field, key string }

// globalKeys are the fields of config.Global. AdminToken is what the token file holds, named so
// that a changed token is said without showing it.
var globalKeys = []fieldKey{
	{"UseDefaultRouteOnly", "use_default_route_only"},
	{"ManageAddresses", "manage_addresses"},
	{"Admin", "admin"},
	{"AdminTokenFile", "admin_token_file"},
	{"AdminToken", "admin_token"},
	{"IdleTimeout", "idle_timeout"},
	{"DrainTimeout", "drain_timeout"},
	{"DialTimeout", "dial_timeout"},
	{"TCPKeepalive", "tcp_keepalive"},
	{"ResetOnClose", "reset_on_close"},
	{"DeferAccept", "defer_accept"},
	{"AdminHosts", "admin_hosts"},
	{"ConnectionLog", "connection_log"},
}

// serviceKeys are the fields of config.VirtualService but its name (what matches a service
// across reloads) and its real servers (compared one by one). A setting a service inherits from
// global (idle_timeout, tcp_keepalive, ...) is compared as resolved, so a changed global default
// also changes each service that takes it.
var serviceKeys = []fieldKey{
	{"VIP", "vip"},
	{"Ports", "ports"},
	{"DefaultGateway", "default_gateway"},
	{"Scheduler", "scheduler"},
	{"Persistence", "persistence"},
	{"IdleTimeout", "idle_timeout"},
	{"TCPKeepalive", "tcp_keepalive"},
	{"ResetOnClose", "reset_on_close"},
	{"Transparent", "transparent"},
	{"SubnetOriginating", "subnet_originating"},
	{"SourceAddresses", "source_addresses"},
	{"Access", "access"},
	{"SorryServer", "sorry_server"},
	{"Health", "health"},
	{"CloseOnDown", "close_on_down"},
	{"DeferAccept", "defer_accept"},
	{"UDPIdleTimeout", "udp.idle_timeout"},
	{"UDPMaxSessions", "udp.max_sessions"},
	{"Redirect", "redirect"},
	{"UnavailableRedirect", "unavailable_redirect"},
}

// pairKeys are the fields of config.Pair; AuthSecret is what the secret file holds.
var pairKeys = []fieldKey{
	{"Networks", "networks"},
	{"Nodes", "nodes"},
	{"VRRPVersion", "vrrp_version"},
	{"AdvertInterval", "advert_interval"},
	{"Preempt", "preempt"},
	{"PreemptDelay", "preempt_delay"},
	{"AuthSecretFile", "auth_secret_file"},
	{"AuthSecret", "auth_secret"},
}

// Fields compared apart from the tables: how a service and a real server are matched, and
// what a reload does not apply (Config's Path, Hash and Warnings).
var (
	configApart     = []string{"Path", "Hash", "Global", "VirtualServices", "Pair", "Warnings"}
	serviceApart    = []string{"Name", "RealServers"}
	realServerApart = []string{"Address", "Port", "Weight", "Enabled"}
)

// changes lists what putting next in force in place of prev changes: global first, then the
// services removed (in prev's order), then those added or changed (in next's order), each
// changed service followed by its real servers removed, added, re-weighted, enabled and
// disabled, and last the pair. Nil when nothing that the balancer, routing, health, the admin
// API or the pair watcher reads differs.
func changes(prev, next *config.Config) []admin.Change {
	var out []admin.Change
	if keys := differing(&prev.Global, &next.Global, globalKeys); len(keys) > 0 {
		out = append(out, admin.Change{Kind: admin.ChangeGlobal, Settings: keys})
	}
	for i := range prev.VirtualServices {
		if vs := &prev.VirtualServices[i]; next.VirtualService(vs.Name) == nil {
			out = append(out, admin.Change{Kind: admin.ChangeServiceRemoved, VirtualService: vs.Name})
		}
	}
	for i := range next.VirtualServices {
		vs := &next.VirtualServices[i]
		old := prev.VirtualService(vs.Name)
		if old == nil {
			out = append(out, admin.Change{Kind: admin.ChangeServiceAdded, VirtualService: vs.Name})
			continue
		}
		if keys := differing(old, vs, serviceKeys); len(keys) > 0 {
			out = append(out, admin.Change{Kind: admin.ChangeServiceChanged, VirtualService: vs.Name, Settings: keys})
		}
		out = append(out, serverChanges(old, vs)...)
	}
	switch {
	case prev.Pair == nil && next.Pair != nil:
		out = append(out, admin.Change{Kind: admin.ChangePairAdded})
	case prev.Pair != nil && next.Pair == nil:
		out = append(out, admin.Change{Kind: admin.ChangePairRemoved})
	case prev.Pair != nil:
		if keys := differing(prev.Pair, next.Pair, pairKeys); len(keys) > 0 {
			out = append(out, admin.Change{Kind: admin.ChangePairChanged, Settings: keys})
		}
	}
	return out
}

// serverChanges are the changes of the real servers of a service both configurations have,
// matched by key (address, and port when the file gives one).
func serverChanges(prev, next *config.VirtualService) []admin.Change {
	before := map[string]config.RealServer{}
	for _, rs := range prev.RealServers {
		before[rs.Key()] = rs
	}
	after := map[string]bool{}
	for _, rs := range next.RealServers {
		after[rs.Key()] = true
	}
	var removed, added, other []admin.Change
	for _, rs := range prev.RealServers {
		if !after[rs.Key()] {
			removed = append(removed, admin.Change{Kind: admin.ChangeServerRemoved, VirtualService: next.Name, RealServer: rs.Key()})
		}
	}
	for _, rs := range next.RealServers {
		c := admin.Change{VirtualService: next.Name, RealServer: rs.Key()}
		old, ok := before[rs.Key()]
		if !ok {
			c.Kind = admin.ChangeServerAdded
			added = append(added, c)
			continue
		}
		if old.Weight != rs.Weight {
			c.Kind, c.Weight = admin.ChangeServerWeight, &admin.WeightChange{From: old.Weight, To: rs.Weight}
			other = append(other, c)
		}
		if old.Enabled != rs.Enabled {
			c.Kind, c.Weight = admin.ChangeServerDisabled, nil
			if rs.Enabled {
				c.Kind = admin.ChangeServerEnabled
			}
			other = append(other, c)
		}
	}
	return append(append(removed, added...), other...)
}

// differing returns the keys of the fields of *a and *b (structs of one type) that differ.
func differing[T any](a, b *T, keys []fieldKey) []string {
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	var out []string
	for _, k := range keys {
		if !equalValues(va.FieldByName(k.field), vb.FieldByName(k.field)) {
			out = append(out, k.key)
		}
	}
	return out
}

// equalValues compares two values of a configuration field. A nil and an empty slice or map
// are equal (the file writes no list and an empty one alike); netip values compare by value.
func equalValues(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Slice:
		if a.Type().Elem().Kind() == reflect.Uint8 {
			return bytes.Equal(a.Bytes(), b.Bytes())
		}
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !equalValues(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for _, k := range a.MapKeys() {
			bv := b.MapIndex(k)
			if !bv.IsValid() || !equalValues(a.MapIndex(k), bv) {
				return false
			}
		}
		return true
	case reflect.Struct:
		if a.Type().Comparable() {
			return a.Equal(b)
		}
		for i := range a.NumField() {
			if !equalValues(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return equalValues(a.Elem(), b.Elem())
	}
	return a.Equal(b)
}
