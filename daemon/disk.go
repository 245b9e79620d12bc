package daemon

import (
	"fmt"
	"sync"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
)

// diskWait is how long a status waits for the configuration file to be read: a local file is
// read in microseconds, and a page polling every 2 s must not wait on a hung mount.
const diskWait = time.Second

// ConfigOnDisk compares the configuration file as it is now with the running configuration,
// by hash: the file as Load would read it (config.HashFile), never parsed. It is asked by every
// status (the page polls), so the file is read at most once at a time (diskCheck).
func (d *Daemon) ConfigOnDisk() admin.ConfigOnDisk {
	running := d.running.Load()
	if running == nil {
		return admin.ConfigOnDisk{State: admin.OnDiskUnknown, Error: "no configuration in force yet"}
	}
	h, err := d.disk.hash(d.path, diskWait)
	switch {
	case err != nil:
		return admin.ConfigOnDisk{State: admin.OnDiskUnknown, Error: err.Error()}
	case h == running.Hash:
		return admin.ConfigOnDisk{State: admin.OnDiskSame, Hash: h}
	}
	return admin.ConfigOnDisk{State: admin.OnDiskDiffers, Hash: h}
}

// diskCheck reads the configuration file for the status one read at a time: callers that ask
// while a read is under way share it, and one the file system holds up (a hung network mount)
// is waited for by nobody beyond its caller's wait, and no second read starts until it ends.
// A page polling the status can so never pile up reads stuck in the kernel.
type diskCheck struct {
	// read is config.HashFile; tests replace it.
	read func(path string) (string, error)

	mu       sync.Mutex
	inFlight *diskRead // nil when no read is under way
}

// diskRead is one read; hash and err are set before done is closed.
type diskRead struct {
	done chan struct{}
	hash string
	err  error
}

// hash is the hash of the file at path, from a read that started at the latest now, or an
// error when that read does not end within wait.
func (c *diskCheck) hash(path string, wait time.Duration) (string, error) {
	c.mu.Lock()
	r := c.inFlight
	if r == nil {
		r = &diskRead{done: make(chan struct{})}
		c.inFlight = r
		read := c.read
		if read == nil {
			read = config.HashFile
		}
		// Its owner is the check, and it ends when the kernel answers, which no context can
		// hasten (as config's own reads): the only goroutine a hung file system can hold.
		go func() {
			r.hash, r.err = read(path)
			c.mu.Lock()
			c.inFlight = nil
			c.mu.Unlock()
			close(r.done)
		}()
	}
	c.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-r.done:
		return r.hash, r.err
	case <-t.C:
		return "", fmt.Errorf("reading the configuration %s: no answer within %s (a hung network mount?)", path, wait)
	}
}
