package pair

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
)

// The two nodes of a pair must run the same file, the same version and see the same real
// servers up: after a failover the standby serves with its own view, and persistent clients stay
// on their servers only if both views agree.

// maxPeerAnswer bounds what is read of a node's status, whatever the peer sends: the watcher
// asks every interval for the daemon's whole life.
const maxPeerAnswer = 16 << 20

// Checker asks both nodes' admin APIs and compares what they say.
type Checker struct {
	Self, Peer    string        // node names
	Local, Remote *admin.Client // this node's admin API and the peer's
}

// NewChecker is the checker for this box's node of cfg's pair (node, or when empty the node
// owning one of this box's addresses). peerAdmin is the peer's admin address:port; when empty,
// its pair.nodes[].admin. Both are asked with the token of global.admin_token_file, within 3 s.
func NewChecker(cfg *config.Config, node, peerAdmin string) (*Checker, error) {
	name, err := LocalNode(cfg, node)
	if err != nil {
		return nil, err
	}
	peer := cfg.Pair.Peer(name)
	if peerAdmin == "" {
		if !peer.Admin.IsValid() {
			return nil, fmt.Errorf("the pair gives no admin address for %s (pair.nodes[].admin): pass -peer-admin", peer.Name)
		}
		peerAdmin = peer.Admin.String()
	}
	c := &Checker{Self: name, Peer: peer.Name, Local: admin.ClientFor(cfg), Remote: admin.NewClient(peerAdmin, cfg.Global.AdminToken)}
	c.SetTimeout(3 * time.Second)
	return c, nil
}

// SetTimeout bounds each request to either node.
func (c *Checker) SetTimeout(d time.Duration) {
	for _, cl := range []*admin.Client{c.Local, c.Remote} {
		cl.HTTP = &http.Client{Timeout: d}
		cl.MaxAnswer = maxPeerAnswer
	}
}

// NodeView is what one node's admin API says about itself.
type NodeView struct {
	Node, Addr string
	Err        error // the node could not be asked
	Version    string
	Hash       string
	Ready      bool // configuration loaded and listeners up: it can take the VIPs
	// Servers maps "service/server" to "up" or "down", with the administrative state when it
	// is not enabled ("up,draining").
	Servers map[string]string
}

// Up is how many real servers the node sees up.
func (v NodeView) Up() int {
	n := 0
	for _, s := range v.Servers {
		if strings.HasPrefix(s, "up") {
			n++
		}
	}
	return n
}

// view asks one node for its status.
func view(ctx context.Context, node string, c *admin.Client) NodeView {
	v := NodeView{Node: node, Addr: c.Addr, Servers: map[string]string{}}
	st, err := c.Status(ctx)
	if err != nil {
		v.Err = err
		return v
	}
	v.Version, v.Hash, v.Ready = st.Version, st.ConfigHash, st.Ready
	for _, s := range st.VirtualServices {
		for _, rs := range s.RealServers {
			h := "down"
			if rs.Up {
				h = "up"
			}
			if rs.State != "" && rs.State != "enabled" {
				h += "," + rs.State
			}
			v.Servers[s.Name+"/"+rs.Address] = h
		}
	}
	return v
}

// Compare asks both nodes at once and lists every difference; a node that cannot be asked is
// one too.
func (c *Checker) Compare(ctx context.Context) (local, peer NodeView, diffs []string) {
	var wg sync.WaitGroup
	wg.Go(func() { local = view(ctx, c.Self, c.Local) })
	wg.Go(func() { peer = view(ctx, c.Peer, c.Remote) })
	wg.Wait()
	for _, v := range []NodeView{local, peer} {
		if v.Err != nil {
			diffs = append(diffs, fmt.Sprintf("cannot ask %s at %s: %v", v.Node, v.Addr, v.Err))
		}
	}
	if len(diffs) > 0 {
		return local, peer, diffs
	}
	for _, v := range []NodeView{local, peer} {
		if !v.Ready {
			diffs = append(diffs, fmt.Sprintf("%s is not ready: it could not take over", v.Node))
		}
	}
	if local.Hash != peer.Hash {
		diffs = append(diffs, fmt.Sprintf("configuration: %s runs %s, %s runs %s", local.Node, short(cmp.Or(local.Hash, "unknown")), peer.Node, short(cmp.Or(peer.Hash, "unknown"))))
	}
	if local.Version != peer.Version {
		diffs = append(diffs, fmt.Sprintf("version: %s runs %s, %s runs %s", local.Node, cmp.Or(local.Version, "unknown"), peer.Node, cmp.Or(peer.Version, "unknown")))
	}
	keys := make([]string, 0, len(local.Servers))
	for k := range local.Servers {
		keys = append(keys, k)
	}
	for k := range peer.Servers {
		if _, ok := local.Servers[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		a, b := cmp.Or(local.Servers[k], "absent"), cmp.Or(peer.Servers[k], "absent")
		if a != b {
			diffs = append(diffs, fmt.Sprintf("real server %s: %s on %s, %s on %s", k, a, local.Node, b, peer.Node))
		}
	}
	return local, peer, diffs
}

// Report is the outcome of `pairlb pair check`.
type Report struct {
	Self, Peer    string
	Local, Remote NodeView
	Diffs         []string
}

// Check compares the nodes, and the file on disk (onDisk, as loaded) with what this node runs:
// the file may have changed since the daemon loaded it.
func (c *Checker) Check(ctx context.Context, onDisk *config.Config) Report {
	r := Report{Self: c.Self, Peer: c.Peer}
	r.Local, r.Remote, r.Diffs = c.Compare(ctx)
	if r.Local.Err == nil && r.Local.Hash != "" && r.Local.Hash != onDisk.Hash {
		r.Diffs = append(r.Diffs, fmt.Sprintf("%s runs configuration %s, but %s on disk is %s (not reloaded?)", c.Self, short(r.Local.Hash), onDisk.Path, short(onDisk.Hash)))
	}
	return r
}

// Agrees reports whether the check found no difference.
func (r Report) Agrees() bool { return len(r.Diffs) == 0 }

// Write prints the report as `pairlb pair check` does: a line per node that answered, then
// "agrees" or a line per difference.
func (r Report) Write(w io.Writer) {
	for _, v := range []NodeView{r.Local, r.Remote} {
		if v.Err == nil {
			fmt.Fprintf(w, "%s (%s): version %s, configuration %s, %d real servers up of %d\n",
				v.Node, v.Addr, cmp.Or(v.Version, "unknown"), short(cmp.Or(v.Hash, "unknown")), v.Up(), len(v.Servers))
		}
	}
	if r.Agrees() {
		fmt.Fprintf(w, "pair %s/%s agrees\n", r.Self, r.Peer)
		return
	}
	for _, d := range r.Diffs {
		fmt.Fprintln(w, "DIFFERENT:", d)
	}
}

func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}
