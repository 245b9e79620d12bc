package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Every file pairlb reads because the configuration names it (the configuration itself, the
// admin token, the VRRP secret, a token file given to a command) is read by ReadFile: a FIFO,
// a device or a file on a hung mount must never stall a reload that holds the reload lock, and
// /dev/zero must never be read into memory.

// Size limits of the files pairlb reads.
const (
	// MaxConfigSize bounds the configuration file: the Lync example with every service of the
	// guide is about 15 KiB.
	MaxConfigSize = 4 << 20
	// MaxSecretSize bounds a token or VRRP secret file: both hold one short word.
	MaxSecretSize = 4 << 10
)

// ReadTimeout is how long ReadFile waits for a file. A local file is read in microseconds;
// only a hung network mount or a stuck device takes longer.
const ReadTimeout = 5 * time.Second

// ErrNotRegular and ErrTooLarge are the refusals of ReadFile, for errors.Is.
var (
	ErrNotRegular = errors.New("not a regular file")
	ErrTooLarge   = errors.New("file too large")
	ErrTimeout    = errors.New("no answer")
)

// ReadFile reads the regular file at path, refusing anything else (a directory, a FIFO, a
// device, a socket), a file larger than limit bytes and a read that takes longer than
// ReadTimeout. Its errors name the path.
func ReadFile(path string, limit int64) ([]byte, error) {
	data, _, err := readFile(path, limit)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return data, nil
}

// readFile is ReadFile with the file's permission bits, and errors that leave the path to the
// caller (a FieldError names it as the value already).
func readFile(path string, limit int64) ([]byte, fs.FileMode, error) {
	type result struct {
		data []byte
		mode fs.FileMode
		err  error
	}
	// A read on a hung NFS mount cannot be interrupted: it runs on its own goroutine so that the
	// caller gets its answer in time. That goroutine then ends when the kernel returns, and
	// closes the file; until then it is the only thing left behind.
	done := make(chan result, 1)
	go func() {
		data, mode, err := readRegular(path, limit)
		done <- result{data, mode, err}
	}()
	t := time.NewTimer(ReadTimeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.data, r.mode, r.err
	case <-t.C:
		return nil, 0, fmt.Errorf("%w within %s (a hung network mount or device?)", ErrTimeout, ReadTimeout)
	}
}

func readRegular(path string, limit int64) ([]byte, fs.FileMode, error) {
	// Stat first, so that a device is never opened at all (opening one can have effects).
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, unwrapPath(err)
	}
	if err := checkRegular(fi, limit); err != nil {
		return nil, 0, err
	}
	// O_NONBLOCK: if the path was replaced by a FIFO since the stat, opening it does not wait
	// for a writer; O_NOCTTY: a terminal never becomes the controlling one. fstat then decides.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, 0, unwrapPath(err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, 0, unwrapPath(err)
	}
	if err := checkRegular(fi, limit); err != nil {
		return nil, 0, err
	}
	// One byte more than the limit tells a file that grew since the stat from one that did not.
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, 0, unwrapPath(err)
	}
	if int64(len(data)) > limit {
		return nil, 0, fmt.Errorf("%w: more than %s bytes", ErrTooLarge, groupDigits(limit))
	}
	return data, fi.Mode().Perm(), nil
}

func checkRegular(fi fs.FileInfo, limit int64) error {
	m := fi.Mode()
	var kind string
	switch {
	case m.IsRegular():
		if fi.Size() > limit {
			return fmt.Errorf("%w: %s bytes, at most %s", ErrTooLarge, groupDigits(fi.Size()), groupDigits(limit))
		}
		return nil
	case m.IsDir():
		kind = "a directory"
	case m&fs.ModeNamedPipe != 0:
		kind = "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		kind = "a socket"
	case m&fs.ModeCharDevice != 0:
		kind = "a character device"
	case m&fs.ModeDevice != 0:
		kind = "a block device"
	default:
		kind = "a special file"
	}
	return fmt.Errorf("%w: it is %s", ErrNotRegular, kind)
}

// unwrapPath drops the path from an *fs.PathError, keeping the operation: the caller names the
// path once.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// groupDigits writes n with thousands separators: 4,194,304.
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := ""
	if n < 0 {
		neg, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return neg + s
}

// checkLogFile checks that pairlb may append to the connection log at path, as run and every
// reload open it: an existing file must be a regular file (or /dev/null) that this process may
// write; otherwise its directory must exist and take a new file. Like a read, the check gives up
// after ReadTimeout, so that a hung mount never stalls a reload.
func checkLogFile(path string) error {
	done := make(chan error, 1)
	go func() { done <- checkLogFileNow(path) }()
	t := time.NewTimer(ReadTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w within %s (a hung network mount?)", ErrTimeout, ReadTimeout)
	}
}

func checkLogFileNow(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil:
		if path != os.DevNull {
			if err := checkRegular(fi, math.MaxInt64); err != nil {
				return err
			}
		}
		if err := syscall.Access(path, accessWrite); err != nil {
			return fmt.Errorf("not writable by this process: %w", err)
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
		return unwrapPath(err)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	switch {
	case err != nil:
		return fmt.Errorf("directory %s: %w", dir, unwrapPath(err))
	case !di.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := syscall.Access(dir, accessWrite|accessSearch); err != nil {
		return fmt.Errorf("cannot create the file: directory %s is not writable by this process: %w", dir, err)
	}
	return nil
}

// The modes of access(2) (W_OK, X_OK), which package syscall does not name.
const (
	accessSearch = 0x1
	accessWrite  = 0x2
)
