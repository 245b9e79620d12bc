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

var bufPool = sync.Pool{New: func() any { b := make([]byte, relayBuffer); return &b }}

// relayPipe is a pipe used as splice's kernel buffer between two sockets.
type relayPipe struct{ r, w int }

var pipePool = sync.Pool{New: func() any {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
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
}

// errWouldBlock ends a splice burst when the source has nothing more to give right now.
var errWouldBlock = errors.New("would block")

func (p *tcpProxy) pipe(dst, src *net.TCPConn, total *atomic.Uint64) {
	r := relay{p: p, dst: dst, src: src, total: total}
	var err error
	if r.srcRaw, err = src.SyscallConn(); err == nil {
		r.dstRaw, err = dst.SyscallConn()
	}
	if err != nil {
		p.close()
		return
	}
	defer func() { total.Add(r.pending) }()

	check := relayRound
	if p.idle > 0 && p.idle < check {
		check = p.idle
	}
	seen, quietSince := p.moved.Load(), time.Now()
	_ = src.SetReadDeadline(quietSince.Add(check))
	for {
		err := r.copyOnce()
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			// Count before the peer can see the end, so a reader of the counters after the
			// exchange finds every byte.
			total.Add(r.pending)
			r.pending = 0
			_ = dst.CloseWrite() // the peer sees this direction end; the other goes on
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Once per check period: publish the bytes, and close if neither direction has moved
			// any for the idle timeout.
			now := time.Now()
			total.Add(r.pending)
			r.pending = 0
			if m := p.moved.Load(); m != seen {
				seen, quietSince = m, now
			}
			if p.idle > 0 && now.Sub(quietSince) >= p.idle {
				p.idled.Store(true)
				p.close()
				return
			}
			_ = src.SetReadDeadline(now.Add(check))
		default:
			// A reset, a closed socket or a write error: the other direction cannot go on.
			p.close()
			return
		}
	}
}

// copyOnce waits for data on src, moves one message through a pooled buffer, and when that
// message filled the buffer, splices until src would block.
func (r *relay) copyOnce() error {
	var buf *[]byte
	var n int
	var rerr error
	err := r.srcRaw.Read(func(fd uintptr) bool {
		b := bufPool.Get().(*[]byte)
		for {
			n, rerr = unix.Read(int(fd), *b)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			bufPool.Put(b)
			return false // wait for readability without holding the buffer
		}
		buf = b
		return true
	})
	if err != nil {
		return err
	}
	if rerr != nil {
		bufPool.Put(buf)
		return os.NewSyscallError("read", rerr)
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

func (r *relay) count(n int) {
	r.pending += uint64(n)
	r.p.moved.Add(uint64(n))
}

// spliceBurst moves data src -> pipe -> dst in the kernel until src would block (then the pipe
// goes back to the pool and the relay waits in buffered mode again), src ends, or an error.
func (r *relay) spliceBurst() error {
	pp, _ := pipePool.Get().(*relayPipe)
	if pp == nil {
		return nil // no pipe (descriptor limit): the buffered path carries on
	}
	for {
		n, err := r.spliceIn(pp)
		if err == errWouldBlock {
			pipePool.Put(pp)
			return nil
		}
		if err != nil || n == 0 {
			pipePool.Put(pp) // nothing was read into it
			if err == nil {
				err = io.EOF
			}
			return err
		}
		if err := r.spliceOut(pp, n); err != nil {
			pp.drain()
			pipePool.Put(pp)
			return err
		}
		r.count(n)
	}
}

// spliceIn moves what src has now into the pipe; 0 bytes means src ended.
func (r *relay) spliceIn(pp *relayPipe) (int, error) {
	var n int
	var serr error
	err := r.srcRaw.Read(func(fd uintptr) bool {
		for {
			var m int64
			m, serr = unix.Splice(int(fd), nil, pp.w, nil, maxSplice, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			n = int(m)
			if serr != unix.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case serr == unix.EAGAIN:
		return 0, errWouldBlock
	case serr != nil:
		return 0, os.NewSyscallError("splice", serr)
	}
	return n, nil
}

// spliceOut empties n bytes of the pipe into dst, waiting while dst's send buffer is full.
func (r *relay) spliceOut(pp *relayPipe, n int) error {
	for n > 0 {
		var m int64
		var serr error
		err := r.dstRaw.Write(func(fd uintptr) bool {
			for {
				m, serr = unix.Splice(pp.r, nil, int(fd), nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if serr != unix.EINTR {
					break
				}
			}
			return serr != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return os.NewSyscallError("splice", serr)
		}
		n -= int(m)
	}
	return nil
}
