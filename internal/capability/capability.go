// Package capability says what the process may do to the kernel, read from
// /proc/self/status: `pairlb run` turns routing off without CAP_NET_ADMIN when the file needs
// none, and `pairlb routes apply|flush` refuse to start without it.
package capability

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NetAdmin reports whether the process holds CAP_NET_ADMIN in its effective set.
func NetAdmin() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<unix.CAP_NET_ADMIN) != 0
		}
	}
	return false
}
