package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

const defaultConfig = "/etc/pairlb/pairlb.yaml"

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "configuration file")
	debug := fs.Bool("debug", false, "log debug events")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	d, err := newDaemon(log, *path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = d.reload()
			}
		}
	}()
	err = d.run(ctx)
	wg.Wait()
	if err != nil {
		log.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}

// daemon wires the packages together for `pairlb run`.
type daemon struct {
	log  *slog.Logger
	path string
	lb   *lb.Balancer

	mu  sync.Mutex // serialises reloads
	cfg *config.Config
}

func newDaemon(log *slog.Logger, path string) (*daemon, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	d := &daemon{log: log, path: path, lb: lb.New(log), cfg: cfg}
	if err := d.lb.Apply(cfg); err != nil {
		return nil, err
	}
	log.Info("configuration loaded", "file", path, "hash", cfg.Hash, "virtual_services", len(cfg.VirtualServices))
	return d, nil
}

// run serves until ctx ends, then stops gracefully.
func (d *daemon) run(ctx context.Context) error {
	return d.lb.Run(ctx)
}

// reload reads the file again. On any error the running configuration stays and every error is
// logged; on success only the difference is applied.
func (d *daemon) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := config.Load(d.path)
	if err != nil {
		// One line per problem: an operator greps the log for the field or the line number.
		var errs config.Errors
		if !errors.As(err, &errs) {
			errs = config.Errors{{File: d.path, Msg: err.Error()}}
		}
		for _, e := range errs {
			d.log.Error("reload rejected", "err", e)
		}
		d.log.Error("keeping the running configuration", "file", d.path, "errors", len(errs))
		return err
	}
	if err := d.lb.Apply(cfg); err != nil {
		d.log.Error("reload failed, keeping the running configuration", "file", d.path, "err", err)
		return err
	}
	d.cfg = cfg
	d.log.Info("configuration reloaded", "file", d.path, "hash", cfg.Hash, "virtual_services", len(cfg.VirtualServices))
	return nil
}
