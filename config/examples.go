package config

import "embed"

// Examples holds the example files under examples/: lync2013-single-pair.yaml, every service of
// the Lync 2013 deployment guide, and loopback.yaml, a setup that runs without root. The lab
// and the tests load them from here so that they can never drift from what the parser accepts.
//
//go:embed examples/*.yaml
var Examples embed.FS
