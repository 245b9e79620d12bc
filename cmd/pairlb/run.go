package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/pairlb/pairlb/daemon"
	"github.com/pairlb/pairlb/internal/buildinfo"
)

const defaultConfig = "/etc/pairlb/pairlb.yaml"

// cmdRun is `pairlb run`: the daemon in the foreground, SIGHUP reloading the file, SIGTERM or
// SIGINT stopping it gracefully.
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

	build := buildinfo.Read(version)
	d, err := daemon.New(daemon.Options{Log: log, Path: *path, Version: build.String(), Build: build, Stderr: stderr})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// The SIGHUP loop ends with Run, whether a signal or Run itself (an admin listener that
	// cannot open) ends it.
	hupCtx, hupDone := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-hupCtx.Done():
				return
			case <-hup:
				_, _ = d.Reload() // logged by the daemon, the running configuration kept
			}
		}
	})
	err = d.Run(ctx)
	hupDone()
	wg.Wait()
	if err != nil {
		log.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}
