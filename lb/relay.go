package lb

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The relay moves one direction of a proxied TCP connection the way HAProxy's splice-auto does:
// small messages (SIP, HTTP requests) are read into a pooled buffer and written out, and once a
// read fills the whole buffer the data is flowing in bulk and moves by splice(2) through a
// pooled pipe, without entering Go memory. Both the buffer and the pipe are taken only when
// there is data to move and given back when the socket would block, so an idle connection holds
// neither: it costs its two sockets and two parked goroutines, nothing more. (io.Copy between two
// TCPConns would splice too, but keeps a pipe — two descriptors — for the connection's life.)

// relayBuffer is the size of the pooled read buffer; a read that fills it switches to splice.
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
	runtime.AddCleanup(p, func(fds [2]int) { unix.Close(fds[0]); unix.Close(fds[1]) }, fds)
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

// relay copies src to dst until src ends, an error, or the idle timeout. It reports bytes to
// moved (shared by both directions of the connection, for idleness) and to total (the service's
// counter) at least every check period.
type relay struct {
	p        *tcpProxy
	dst, src *net.TCPConn
	srcRaw   syscall.RawConn
	dstRaw   syscall.RawConn
	total    *atomic.Uint64
	pending  uint64 // bytes not yet added to total

	// The system calls run inside RawConn callbacks. The callbacks are bound once per
	// direction and leave their results here, so a message costs no allocation.
	readFn, spliceInFn, spliceOutFn func(fd uintptr) bool
	buf                             *[]byte
	pipe                            *relayPipe
	n                               int // bytes read, spliced in, or left to splice out
	errno                           error

	fd         int32  // src's descriptor, the parker's key
	watched    bool   // fd is in the parker's epoll set
	own        uint64 // bytes this direction has moved
	ownAtCheck uint64 // own at the last check period
	seen       uint64 // p.moved at the last check period
}

// newRelay prepares the direction src -> dst of p.
func (p *tcpProxy) newRelay(dst, src *net.TCPConn, total *atomic.Uint64) (*relay, error) {
	r := &relay{p: p, dst: dst, src: src, total: total}
	r.readFn, r.spliceInFn, r.spliceOutFn = r.read, r.spliceIn, r.spliceOut
	var err error
	if r.srcRaw, err = src.SyscallConn(); err == nil {
		r.dstRaw, err = dst.SyscallConn()
	}
	if err == nil {
		err = r.srcRaw.Control(func(fd uintptr) { r.fd = int32(fd) })
	}
	return r, err
}

// resume runs the direction until src ends, the connection closes or idles out, or the
// direction has been quiet long enough to park (see park.go). It is the body of the
// direction's goroutine, started anew each time the direction wakes up from parking.
func (r *relay) resume() {
	p := r.p
	check := min(relayRound, parkAfter)
	if p.idle > 0 && p.idle < check {
		check = p.idle
	}
	r.ownAtCheck = r.own
	_ = r.src.SetReadDeadline(time.Now().Add(check))
	for {
		err := r.copyOnce()
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			// Count before the peer can see the end, so a reader of the counters after the
			// exchange finds every byte.
			r.flush()
			// The first direction to end half-closes, so the peer sees the end while the other
			// direction goes on. The second needs no shutdown: both sockets close right after,
			// which sends its FIN, and a shutdown costs as much as the close again.
			if p.halfClosed.CompareAndSwap(false, true) {
				_ = r.dst.CloseWrite()
			}
			r.finish()
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Once per check period: publish the bytes, close if neither direction has moved
			// any for the idle timeout, and park if this one has moved none since the last check.
			now := time.Now()
			r.flush()
			if m := p.moved.Load(); m != r.seen {
				r.seen = m
				p.lastActive.Store(now.UnixNano())
			}
			if p.idleSince(now) {
				p.idled.Store(true)
				p.close()
				r.finish()
				return
			}
			if r.own == r.ownAtCheck && p.parker != nil && p.parker.park(r) {
				return // the parker resumes or finishes this direction
			}
			r.ownAtCheck = r.own
			_ = r.src.SetReadDeadline(now.Add(check))
		default:
			// A reset, a closed socket or a write error: the other direction cannot go on.
			p.close()
			r.finish()
			return
		}
	}
}

// flush publishes the bytes counted since the last flush.
func (r *relay) flush() {
	r.total.Add(r.pending)
	r.pending = 0
}

// finish ends the direction; the second direction to finish releases the connection.
func (r *relay) finish() {
	r.flush()
	if r.p.finished.Add(1) == 2 {
		r.p.close()
		r.p.release()
	}
}

// copyOnce waits for data on src, moves one message through a pooled buffer, and when that
// message filled the buffer, splices until src would block.
func (r *relay) copyOnce() error {
	r.buf = nil
	if err := r.srcRaw.Read(r.readFn); err != nil {
		return err
	}
	buf, n := r.buf, r.n
	if r.errno != nil {
		bufPool.Put(buf)
		return os.NewSyscallError("read", r.errno)
	}
	if n == 0 {
		bufPool.Put(buf)
		return io.EOF
	}
	_, werr := r.dst.Write((*buf)[:n])
	bufPool.Put(buf)
	if werr != nil {
		return werr
	}
	r.count(n)
	if n < relayBuffer {
		return nil
	}
	return r.spliceBurst()
}

// read is readFn: it takes a buffer only when there is something to read, and gives it back
// before Read waits for readability.
func (r *relay) read(fd uintptr) bool {
	b := bufPool.Get().(*[]byte)
	var err error
	for {
		r.n, err = unix.Read(int(fd), *b)
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EAGAIN {
		bufPool.Put(b)
		return false
	}
	r.buf, r.errno = b, err
	return true
}

func (r *relay) count(n int) {
	r.pending += uint64(n)
	r.own += uint64(n)
	r.p.moved.Add(uint64(n))
}

// spliceBurst moves data src -> pipe -> dst in the kernel until src would block (then the pipe
// goes back to the pool and the relay waits in buffered mode again), src ends, or an error.
func (r *relay) spliceBurst() error {
	pp, _ := pipePool.Get().(*relayPipe)
	if pp == nil {
		return nil // no pipe (descriptor limit): the buffered path carries on
	}
	r.pipe = pp
	defer func() {
		r.pipe = nil
		pipePool.Put(pp) // empty: every exit below has drained it
	}()
	for {
		if err := r.srcRaw.Read(r.spliceInFn); err != nil {
			return err
		}
		n := r.n
		switch {
		case r.errno == unix.EAGAIN:
			return nil
		case r.errno != nil:
			return os.NewSyscallError("splice", r.errno)
		case n == 0:
			return io.EOF
		}
		if err := r.emptyPipe(n); err != nil {
			pp.drain()
			return err
		}
		r.count(n)
	}
}

// spliceIn is spliceInFn: it moves what src has now into the pipe without waiting; 0 bytes
// means src ended, EAGAIN that it has nothing now.
func (r *relay) spliceIn(fd uintptr) bool {
	for {
		m, err := unix.Splice(int(fd), nil, r.pipe.w, nil, maxSplice, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			r.n, r.errno = int(m), err
			return true
		}
	}
}

// emptyPipe splices n bytes from the pipe into dst, waiting while dst's send buffer is full.
func (r *relay) emptyPipe(n int) error {
	r.n = n
	for r.n > 0 {
		if err := r.dstRaw.Write(r.spliceOutFn); err != nil {
			return err
		}
		if r.errno != nil {
			return os.NewSyscallError("splice", r.errno)
		}
	}
	return nil
}

// spliceOut is spliceOutFn: one splice from the pipe into dst; false makes Write wait until
// dst can take more.
func (r *relay) spliceOut(fd uintptr) bool {
	for {
		m, err := unix.Splice(r.pipe.r, nil, int(fd), nil, r.n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			r.errno = nil
			return false
		case nil:
			r.n -= int(m)
			r.errno = nil
			return true
		default:
			r.errno = err
			return true
		}
	}
}
