package lb

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// freebind lets a listener bind a VIP the box does not hold yet: on the standby of a pair the
// VIP arrives with keepalived, and the listener must already be there to serve it.
func freebind(network, _ string, c syscall.RawConn) error {
	return setsockopt(network, c, unix.IPPROTO_IP, unix.IP_FREEBIND, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND)
}

// transparent lets a connection to a real server leave from the client's address, so the real
// server sees the client (the Edge A/V service needs it). It requires CAP_NET_ADMIN.
func transparent(network, _ string, c syscall.RawConn) error {
	return setsockopt(network, c, unix.SOL_IP, unix.IP_TRANSPARENT, unix.SOL_IPV6, unix.IPV6_TRANSPARENT)
}

// noPortBind lets the kernel choose a connection's local port at connect time, per destination,
// instead of at bind time: Go binds a dial with a local address (also 0.0.0.0:0) before it
// connects, and a port chosen at bind must be unique for the whole box, which caps a balancer
// at one ephemeral range of connections in all. With this, each real server gets its own
// range, and Alternate Source Addresses multiply it.
func noPortBind(network string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// dialControl prepares a socket towards a real server: no port chosen at bind, and for a
// transparent service the right to bind the client's address.
func dialControl(transparentToo bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if err := noPortBind(network, c); err != nil {
			return err
		}
		if transparentToo {
			return transparent(network, address, c)
		}
		return nil
	}
}

func setsockopt(network string, c syscall.RawConn, level4, opt4, level6, opt6 int) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		level, opt := level4, opt4
		if network == "tcp6" || network == "udp6" {
			level, opt = level6, opt6
		}
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
