package routing_test

// The namespace tests of package routing need a real balancer inside the box's namespace. A
// process's sockets are made in the namespace of the thread that creates them, and the balancer
// creates its sockets to real servers on goroutines of its own, on any thread; so it cannot run
// inside the test process. Instead the test binary starts itself again, inside the namespace
// (`ip netns exec`), and TestMain turns that copy into a balancer: lbHelperEnv carries the
// configuration as JSON. This file is in the external test package so that only tests import
// package lb; package routing never does.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// These names are repeated in transparency_test.go (package routing cannot import this one).
const (
	lbHelperEnv      = "PAIRLB_TEST_LB_CONFIG" // the configuration, JSON
	lbHelperReadyEnv = "PAIRLB_TEST_LB_READY"  // a file written once the listeners are open ("ok" or the error)
	lbHelperLogEnv   = "PAIRLB_TEST_LB_LOG"    // where the balancer logs
)

func TestMain(m *testing.M) {
	if os.Getenv(lbHelperEnv) != "" {
		os.Exit(runLBHelper())
	}
	os.Exit(m.Run())
}

// runLBHelper serves the configuration until SIGTERM.
func runLBHelper() int {
	ready := os.Getenv(lbHelperReadyEnv)
	fail := func(err error) int {
		_ = os.WriteFile(ready, []byte("error: "+err.Error()), 0o600)
		return 1
	}
	logf, err := os.OpenFile(os.Getenv(lbHelperLogEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	var cfg config.Config
	if err := json.Unmarshal([]byte(os.Getenv(lbHelperEnv)), &cfg); err != nil {
		return fail(fmt.Errorf("decoding the configuration: %w", err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	b := lb.New(slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := b.Apply(&cfg); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(ready, []byte("ok"), 0o600); err != nil {
		return 1
	}
	b.Run(ctx)
	return 0
}
