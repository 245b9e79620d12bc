package lb

import (
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// The buffers and pipes of TCP connections (tcpconn.go). A connection takes them only while data
// is waiting to be written and gives them back as soon as it has gone, so an idle connection
// holds neither: it costs its two sockets and a small struct. (io.Copy between two TCPConns
// would splice too, but keeps a pipe, two descriptors, for the connection's life.)

// relayBuffer is the size of a loop's read buffer and of the pooled buffers that hold what a
// destination did not take; a read that fills it switches the direction to splice.
const relayBuffer = 16 << 10

// maxSplice is the most one splice call asks for; the pipe's capacity bounds it in practice.
const maxSplice = 1 << 20

// pipeSize is the capacity asked of each pooled pipe.
const pipeSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, relayBuffer); return &b }}

// relayPipe is a pipe used as splice's kernel buffer between two sockets.
type relayPipe struct{ r, w int }

var pipePool = sync.Pool{New: func() any {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
	// A larger pipe moves a bulk transfer in fewer splice calls; where the kernel refuses (the
	// per-user pipe limit), the default 64 KiB does.
	_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	p := &relayPipe{r: fds[0], w: fds[1]}
	// A pipe dropped by the pool is closed when collected.
	runtime.AddCleanup(p, func(fds [2]int) { sysClose(fds[0]); sysClose(fds[1]) }, fds)
	return p
}}

// drain empties a pipe left holding data by a failed write, so that it can be reused.
func (p *relayPipe) drain() {
	var buf [4096]byte
	for {
		if n, err := unix.Read(p.r, buf[:]); n <= 0 || err != nil {
			return
		}
	}
}
