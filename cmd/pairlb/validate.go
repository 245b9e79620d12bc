package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/pairlb/pairlb/config"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Load reads the files the configuration names too, as run and every reload do.
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	for i := range cfg.VirtualServices {
		fmt.Fprintln(stdout, cfg.VirtualServices[i].Summary())
	}
	fmt.Fprintf(stdout, "%s: %d virtual services, ok\n", *path, len(cfg.VirtualServices))
	return 0
}
