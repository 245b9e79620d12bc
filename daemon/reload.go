package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/routing"
)

// load reads and checks a configuration file as run and every reload take it: parsed and
// validated by config.Load (which reads the files it names, with their checks), its warnings
// logged one per line, as validate prints them. hash is the file's, also when it is rejected
// ("" when it could not be read).
func load(log *slog.Logger, path string) (cfg *config.Config, hash string, err error) {
	cfg, hash, err = config.LoadHash(path)
	if err != nil {
		return nil, hash, err
	}
	for _, w := range cfg.Warnings {
		log.Warn("configuration warning", "warning", w.Error())
	}
	// config.Load has read the token, with its checks, so that validate reports the same
	// problems as run; a Config made otherwise would run without it.
	if cfg.Global.AdminTokenFile != "" && cfg.Global.AdminToken == nil {
		return nil, hash, fmt.Errorf("%s: global.admin_token_file %s was not read (the configuration was not loaded with config.Load)", cfg.Path, cfg.Global.AdminTokenFile)
	}
	return cfg, hash, nil
}

// Reload reads the file again and applies it. On any error the running configuration stays
// and every error is logged, one line per problem; on success only the difference is applied,
// and the log line says what changed. The verdict (admin.Applied or admin.Rejected, never nil)
// is LastReload's from then on.
func (d *Daemon) Reload() (*admin.Reload, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := d.running.Load()
	cfg, hash, err := load(d.log, d.path)
	if err == nil && d.routes == nil && needsRouting(cfg) {
		err = errNeedsNetAdmin
	}
	if err == nil {
		err = d.apply(cfg)
	}
	d.metrics.reloaded(cfg, err)
	if err != nil {
		// One line per problem: an operator greps the log for the field or the line number.
		var errs config.Errors
		if !errors.As(err, &errs) {
			errs = config.Errors{{File: d.path, Msg: err.Error()}}
		}
		for _, e := range errs {
			d.log.Error("reload rejected", "err", e)
		}
		d.log.Error("keeping the running configuration", "file", d.path, "hash", prev.Hash, "rejected_hash", hash, "errors", len(errs))
		v := admin.Rejected(time.Now(), d.path, hash, prev, err)
		d.last.Store(v)
		return v, err
	}
	v := admin.Applied(time.Now(), admin.TriggerReload, prev, cfg, changes(prev, cfg))
	d.last.Store(v)
	what := admin.ChangesText(v.Changes)
	if len(v.Changes) == 0 {
		what = v.Nothing()
	}
	d.log.Info("configuration reloaded", "file", d.path, "hash", cfg.Hash, "previous_hash", prev.Hash,
		"virtual_services", len(cfg.VirtualServices), "changes", what)
	return v, nil
}

// LastReload is the verdict on the last reading of the file: at start, then by Reload.
func (d *Daemon) LastReload() *admin.Reload { return d.last.Load() }

// Reapply applies the running configuration again, reading nothing: what keepalived's notify
// script asks for when this node becomes MASTER. The kernel part is what changes: the VIPs
// keepalived just added get their routing; the balancer and the health monitor find nothing to
// change. An edit of the file that nobody has reloaded is not applied by a failover.
func (d *Daemon) Reapply() (*config.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.running.Load()
	if err := d.apply(cfg); err != nil {
		d.log.Error("re-applying the running configuration", "hash", cfg.Hash, "err", err)
		return cfg, err
	}
	d.log.Info("running configuration re-applied", "hash", cfg.Hash)
	return cfg, nil
}

// apply makes every part run cfg. It is the one path a configuration takes, the first as every
// reload and re-apply, and its steps go in this order:
//
//  1. the box's addresses: the tables of subnet_originating sources and of the box's own
//     addresses (box.go) are built for cfg's VIPs from the next links snapshot on;
//  2. the kernel: routing.Manager.Set(cfg) installs the tables, rules and routes before any
//     listener of cfg opens, so that the replies of the first connections already leave through
//     their VIP's gateway; the links snapshot it plans with rebuilds the tables of step 1 (when
//     routing is off, the daemon reads the links itself);
//  3. the balancer: lb.Balancer.Apply(cfg) opens, closes and swaps listeners and pools; it is
//     atomic, so on a failure it keeps the running configuration, and steps 1 and 2 are put back
//     to match it;
//  4. health: the monitor probes cfg's real servers, from the sources of step 2;
//  5. the admin API: the token and the names of the Host rule;
//  6. the pair watcher: cfg's nodes and peer;
//  7. cfg is the running configuration (Running).
//
// Only steps 2 and 3 can fail, and nothing after them is touched when they do. d.mu is held,
// or the daemon is not running yet.
//
// Before step 1 the connection log's sink is opened (connlog.go): a file anew, so that a reload
// after logrotate moves the log to the new file, except on a re-apply, which keeps the open
// one. A sink that cannot be opened (a syslog socket that is not there) refuses cfg before
// anything has changed; the balancer is given the sink once step 3 has succeeded.
//
// A part of the routing plan the box's links cannot carry now (a gateway whose link is down or
// has lost its address) does not stop the configuration: the rest is installed, the manager
// logs it and retries it when links change, and the status and metrics show it. A box that
// boots with its DMZ link down still serves its internal VIPs. Only what no link state can mend
// (a VIP and its gateway of different families, say) rejects the file.
func (d *Daemon) apply(cfg *config.Config) error {
	prev := d.running.Load()
	clog, keepLog, err := d.openConnLog(cfg, prev)
	if err != nil {
		return err
	}
	d.box.planFor(cfg)
	if err := d.setRouting(cfg); err != nil {
		closeSink(clog)
		d.restore(prev)
		return fmt.Errorf("routing: %w", err)
	}
	if err := d.lb.Apply(cfg); err != nil {
		closeSink(clog)
		d.restore(prev)
		return err
	}
	if !keepLog {
		d.lb.SetConnectionLog(clog, cfg.Global.ConnectionLog.Format)
	}
	targets := healthTargets(cfg, d.box.source)
	d.health.Set(targets)
	d.metrics.setTargets(targets)
	d.admin.Configure(cfg)
	d.pair.Set(cfg)
	d.running.Store(cfg)
	return nil
}

// setRouting is step 2 of apply: the kernel state of cfg, and a links snapshot for the box's
// tables. A partial plan is no failure (see apply).
func (d *Daemon) setRouting(cfg *config.Config) error {
	if d.routes == nil {
		if l, err := d.linkReader.Links(); err == nil {
			d.box.setLinks(l)
		} else {
			d.log.Warn("reading the box's links; the previous snapshot stays", "err", err)
			d.box.rebuild()
		}
		return nil
	}
	var partial *routing.PartialError
	if err := d.routes.Set(cfg); err != nil && !errors.As(err, &partial) {
		return err
	}
	return nil
}

// restore puts steps 1 and 2 of apply back to prev after a later step failed; nothing to do
// before the first configuration is running.
func (d *Daemon) restore(prev *config.Config) {
	if prev == nil {
		return
	}
	d.box.planFor(prev)
	if err := d.setRouting(prev); err != nil {
		d.log.Error("restoring routing for the running configuration", "err", err)
	}
	// When the snapshot could not be taken, the tables are still those built for the rejected
	// configuration's VIPs.
	d.box.rebuild()
}

func needsRouting(cfg *config.Config) bool {
	if cfg.Global.ManageAddresses {
		return true
	}
	for _, vs := range cfg.VirtualServices {
		if vs.DefaultGateway.IsValid() || vs.Transparent {
			return true
		}
	}
	return false
}
