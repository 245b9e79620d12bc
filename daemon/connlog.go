package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/pairlb/pairlb/config"
)

// The connection log's sinks: the balancer formats the lines and writes them from a goroutine of
// its own (lb.Balancer.SetConnectionLog); the daemon opens where they go. A file is opened anew
// by every start and reload, so that logrotate's rename followed by `systemctl reload` moves
// the log to a new file; a re-apply (keepalived's notify) keeps what is open, so that a failover
// never waits on, or fails for, a log file.

// syslogSocket is the local syslog socket; a variable for the tests.
var syslogSocket = "/dev/log"

// syslogTag and syslogPriority are what each connection line is sent to syslog with: facility
// daemon, severity info. The tag is not the daemon's own, so that a syslog rule (rsyslog's
// `:programname, isequal, "pairlb-conn"`) or `journalctl -t pairlb-conn` can keep the lines
// apart from pairlb's events.
const (
	syslogTag      = "pairlb-conn"
	syslogPriority = 3<<3 | 6
	// syslogTimeout bounds one datagram's send: a syslog daemon that has stopped reading makes
	// the sender wait, and the lines are better lost (and counted) than the writer stuck.
	syslogTimeout = time.Second
)

// openConnLog opens the sink of cfg's connection log, or returns nil and keep true when the
// balancer's current sink stays: cfg is the running configuration applied again. A nil sink
// with keep false turns the log off.
func (d *Daemon) openConnLog(cfg, running *config.Config) (w io.Writer, keep bool, err error) {
	if cfg == running {
		return nil, true, nil
	}
	c := cfg.Global.ConnectionLog
	switch {
	case !c.Enabled():
		return nil, false, nil
	case c.To == config.ConnLogStderr:
		return struct{ io.Writer }{d.stderr}, false, nil // never closed: it is the process's
	case c.To == config.ConnLogSyslog:
		s, err := dialSyslog(syslogSocket)
		if err != nil {
			return nil, false, fmt.Errorf("global.connection_log: syslog: %w", err)
		}
		return s, false, nil
	}
	f, err := openLogFile(c.To)
	if err != nil {
		return nil, false, fmt.Errorf("global.connection_log: %w", err)
	}
	return f, false, nil
}

// openLogFile opens the file at path for appending, creating it with mode 0640 whatever the
// umask (the unit's is 0077), so that a group of log readers can be given it.
func openLogFile(path string) (*os.File, error) {
	// O_NONBLOCK: a FIFO put there since the file was validated does not hold the open; fstat
	// then refuses it.
	const flags = os.O_WRONLY | os.O_APPEND | syscall.O_NONBLOCK | syscall.O_NOCTTY
	f, err := os.OpenFile(path, flags|os.O_CREATE|os.O_EXCL, 0o640)
	created := err == nil
	if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(path, flags, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the connection log: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() && path != os.DevNull {
		err = fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if err == nil && created {
		err = f.Chmod(0o640)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening the connection log: %w", err)
	}
	return f, nil
}

// syslogSink sends each line it is given as one datagram to the local syslog socket, in the
// form of RFC 3164 a local syslog daemon or journald reads: <PRI>TIMESTAMP TAG[PID]: LINE.
type syslogSink struct {
	path string
	conn *net.UnixConn
	head []byte // "TAG[PID]: "
	msg  []byte
}

func dialSyslog(path string) (*syslogSink, error) {
	s := &syslogSink{path: path, head: []byte(syslogTag + "[" + strconv.Itoa(os.Getpid()) + "]: ")}
	if err := s.dial(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *syslogSink) dial() error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("the local syslog socket %s: %w (is a syslog daemon or journald listening there?)", s.path, err)
	}
	s.conn = c
	return nil
}

// Write sends each line of p, which holds whole lines, as a datagram. It returns the bytes of
// the lines sent, so that the lines lost are those after it.
func (s *syslogSink) Write(p []byte) (int, error) {
	sent := 0
	for len(p) > 0 {
		line, rest, _ := bytes.Cut(p, []byte{'\n'})
		if err := s.send(line); err != nil {
			return sent, err
		}
		sent += len(p) - len(rest)
		p = rest
	}
	return sent, nil
}

// send sends one line, dialling again once if the socket is gone (the syslog daemon
// restarted); a send that times out is not retried.
func (s *syslogSink) send(line []byte) error {
	m := append(s.msg[:0], '<')
	m = strconv.AppendInt(m, syslogPriority, 10)
	m = append(m, '>')
	m = time.Now().AppendFormat(m, time.Stamp)
	m = append(m, ' ')
	m = append(m, s.head...)
	m = append(m, line...)
	s.msg = m
	var err error
	for try := 0; try < 2; try++ {
		if s.conn == nil {
			if err = s.dial(); err != nil {
				return err
			}
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(syslogTimeout))
		if _, err = s.conn.Write(m); err == nil {
			return nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("syslog %s: %w", s.path, err)
		}
		s.conn.Close()
		s.conn = nil
	}
	return fmt.Errorf("syslog %s: %w", s.path, err)
}

func (s *syslogSink) Close() error {
	if s.conn == nil {
		return nil
	}
	return s.conn.Close()
}

// closeSink closes a sink the balancer was not given after all.
func closeSink(w io.Writer) {
	if c, ok := w.(io.Closer); ok {
		_ = c.Close()
	}
}
