// Command pairlb is the load balancer daemon and its tools: `run` serves a configuration,
// `validate` checks one, `reload` makes the running one read its file again. It is the only place where the packages are wired together.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/pairlb/pairlb/internal/buildinfo"
)

const usage = `pairlb: a load balancer pair for Lync / Skype for Business pools

usage:
  pairlb run -c FILE                          serve FILE in the foreground (logs to stderr)
  pairlb validate -c FILE                     check FILE; print one line per service or every error
  pairlb routes -c FILE show|apply|flush      the policy routing plan, what is installed, the difference
  pairlb status [-c FILE|-admin ADDR] [--json]  services and real servers of the running daemon
  pairlb reload [-c FILE|-admin ADDR]         reload the running daemon's file; print what changed or every error
  pairlb server drain|disable|enable [VS] ADDRESS  set a real server's state (in VS, or everywhere)
  pairlb server wait-drained ADDRESS [--timeout D]  wait until ADDRESS has nothing open
  pairlb keepalived -c FILE --node NAME       render keepalived.conf for one node of the pair
  pairlb pair check -c FILE                   compare the two nodes of the pair
  pairlb lab [--keep|--clean]                 the Lync lab in network namespaces (root)
  pairlb version                              print the version
`

// version is set at build time with -ldflags "-X main.version=..."; the VCS revision and time
// come from the go command's stamp (internal/buildinfo).
var version = "dev"

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "routes":
		return cmdRoutes(args[1:], stdout, stderr)
	case "lab":
		return cmdLab(args[1:], stdout, stderr)
	case "lab-agent": // hidden: the lab's servers and clients, run inside its namespaces
		return cmdLabAgent(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "reload":
		return cmdReload(args[1:], stdout, stderr)
	case "server":
		return cmdServer(args[1:], stdout, stderr)
	case "keepalived":
		return cmdKeepalived(args[1:], stdout, stderr)
	case "pair":
		return cmdPair(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "pairlb", buildinfo.Read(version))
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "pairlb: unknown command %q\n\n%s", args[0], usage)
	return 2
}
