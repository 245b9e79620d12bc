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
