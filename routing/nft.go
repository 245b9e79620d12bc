package routing

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// nftConn opens an nftables connection to the kernel's namespace (the calling thread's when ns
// is nil). The connection is transient: each operation opens and closes its own netlink socket.
func (k netlinkKernel) nftConn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if k.ns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(*k.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return c, nil
}

func nftTable() *nftables.Table {
	return &nftables.Table{Name: NFTable, Family: nftables.TableFamilyINet}
}

func nftChain(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{
		Name:     NFChain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityMangle,
		Policy:   new(nftables.ChainPolicyAccept),
	}
}

// nftRuleExprs is `iifname IF socket transparent 1 counter meta mark set meta mark and
// ^MarkMask or Mark`, as nft itself encodes it.
func nftRuleExprs(ifname string) []expr.Any {
	name := make([]byte, unix.IFNAMSIZ) // NUL-padded, as nft compares interface names
	copy(name, ifname)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		&expr.Counter{},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(MarkMask)),
			Xor:  binaryutil.NativeEndian.PutUint32(Mark),
		},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func (k netlinkKernel) nftState() (*Transparency, bool, error) {
	c, err := k.nftConn()
	if err != nil {
		return nil, false, err
	}
	return readNFT(c)
}

// readNFT reads pairlb's nftables table. It returns nil when there is none, and foreign true
// when the table exists but is not in the shape pairlb makes (edited by hand, or by an older
// pairlb), so that it must be replaced.
func readNFT(c *nftables.Conn) (t *Transparency, foreign bool, err error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, false, fmt.Errorf("listing nftables tables: %w", err)
	}
	i := slices.IndexFunc(tables, func(t *nftables.Table) bool { return t.Name == NFTable })
	if i < 0 {
		return nil, false, nil
	}
	table := tables[i]
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, false, fmt.Errorf("listing chains of nftables table inet %s: %w", NFTable, err)
	}
	chains = slices.DeleteFunc(chains, func(ch *nftables.Chain) bool { return ch.Table == nil || ch.Table.Name != NFTable })
	want := nftChain(table)
	if len(chains) != 1 {
		return &Transparency{}, true, nil
	}
	ch := chains[0]
	if ch.Name != want.Name || ch.Type != want.Type || ch.Hooknum == nil || *ch.Hooknum != *want.Hooknum ||
		ch.Priority == nil || *ch.Priority != *want.Priority {
		return &Transparency{}, true, nil
	}
	rules, err := c.GetRules(table, ch)
	if err != nil {
		return nil, false, fmt.Errorf("listing rules of nftables chain inet %s %s: %w", NFTable, NFChain, err)
	}
	t = &Transparency{}
	for _, r := range rules {
		name, ok := nftRuleLink(r)
		if !ok {
			return t, true, nil
		}
		t.Links = append(t.Links, name)
	}
	slices.Sort(t.Links)
	if len(slices.Compact(slices.Clone(t.Links))) != len(t.Links) {
		return t, true, nil
	}
	return t, false, nil
}

// nftRuleLink returns the interface a rule of pairlb's chain matches; ok is false when the rule
// is not one pairlb makes.
func nftRuleLink(r *nftables.Rule) (string, bool) {
	if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); c != nftComment {
		return "", false
	}
	if len(r.Exprs) < 2 {
		return "", false
	}
	m, ok1 := r.Exprs[0].(*expr.Meta)
	cmp, ok2 := r.Exprs[1].(*expr.Cmp)
	if !ok1 || !ok2 || m.Key != expr.MetaKeyIIFNAME {
		return "", false
	}
	name := strings.TrimRight(string(cmp.Data), "\x00")
	// The library reads back only the expressions it knows, and it does not know socket.
	want := slices.DeleteFunc(nftRuleExprs(name), func(e expr.Any) bool { _, ok := e.(*expr.Socket); return ok })
	if len(r.Exprs) != len(want) {
		return "", false
	}
	for i := range want {
		if fmt.Sprintf("%T", r.Exprs[i]) != fmt.Sprintf("%T", want[i]) {
			return "", false
		}
	}
	return name, true
}

func (k netlinkKernel) nftWrite(want *Transparency, had bool) error {
	c, err := k.nftConn()
	if err != nil {
		return err
	}
	t := nftTable()
	if want == nil {
		c.DelTable(t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing nftables table inet %s: %w", NFTable, err)
		}
		return nil
	}
	if had {
		c.DelTable(t)
	}
	t = c.AddTable(t)
	ch := c.AddChain(nftChain(t))
	for _, l := range want.Links {
		c.AddRule(&nftables.Rule{
			Table:    t,
			Chain:    ch,
			Exprs:    nftRuleExprs(l),
			UserData: userdata.AppendString(nil, userdata.TypeComment, nftComment),
		})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing nftables table inet %s: %w", NFTable, err)
	}
	return nil
}

// unsupported reports whether err says the kernel has no nf_tables.
func unsupported(err error) bool {
	return errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT)
}
