package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	vnetns "github.com/vishvananda/netns"
)

// DefaultStateDir is where the lab records what it made, one <prefix>.json per lab, with the
// lab's files (configuration, logs) in <prefix>/ beside it.
const DefaultStateDir = "/run/pairlb-lab"

// netnsDir is where named namespaces live (iproute2, vishvananda/netns).
const netnsDir = "/var/run/netns"

// State is the record of one lab: exactly what `pairlb lab --clean` may remove.
type State struct {
	Prefix     string      `json:"prefix"`
	Created    time.Time   `json:"created"`
	Owner      Proc        `json:"owner"` // the `pairlb lab` process that made it
	Kept       bool        `json:"kept"`  // left running on purpose (--keep)
	Dir        string      `json:"dir"`   // the lab's files
	Namespaces []string    `json:"namespaces"`
	Processes  []StateProc `json:"processes"`
}

// Proc identifies a process across PID reuse: its PID and its start time in clock ticks since
// boot (/proc/PID/stat field 22).
type Proc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// StateProc is a process the lab started.
type StateProc struct {
	Proc
	What string `json:"what"`
}

// stateFile keeps a State on disk, rewritten after every change so that a lab killed at any
// point can still be cleaned.
type stateFile struct {
	mu   sync.Mutex
	path string
	st   State
}

func newStateFile(dir, prefix string) (*stateFile, error) {
	base := strings.TrimSuffix(prefix, "-")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	work := filepath.Join(dir, base)
	if err := os.Mkdir(work, 0o700); err != nil {
		return nil, fmt.Errorf("creating the lab's directory (a lab left by a crash? pairlb lab --clean): %w", err)
	}
	owner, _ := procOf(os.Getpid())
	s := &stateFile{path: filepath.Join(dir, base+".json"), st: State{Prefix: prefix, Created: time.Now().UTC(), Owner: owner, Dir: work}}
	return s, s.save()
}

func (s *stateFile) save() error {
	b, err := json.MarshalIndent(s.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	return os.Rename(tmp, s.path)
}

func (s *stateFile) update(f func(*State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.st)
	return s.save()
}

func (s *stateFile) remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(os.RemoveAll(s.st.Dir), os.Remove(s.path))
}

// procOf reads a process's start time.
func procOf(pid int) (Proc, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return Proc{}, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return Proc{}, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Proc{}, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	return Proc{PID: pid, Start: start}, nil
}

// alive reports whether p is still the process that was recorded and has not exited.
func (p Proc) alive() bool {
	if p.PID <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	now, err := procOf(p.PID)
	if err != nil || now.Start != p.Start {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || len(b) < i+3 || b[i+2] != 'Z'
}

// stop ends a recorded process (and its process group, which it leads): SIGTERM, then SIGKILL
// after grace. It does nothing when the PID now belongs to another process.
func (p Proc) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(-p.PID, syscall.SIGTERM)
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !p.alive() {
			return nil
		}
	}
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(-p.PID, syscall.SIGKILL)
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	for range 100 {
		if !p.alive() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d did not exit", p.PID)
}

// Clean removes every lab recorded under dir whose owner is no longer running (a lab kept with
// --keep, or one whose `pairlb lab` was killed): its processes, its namespaces and its files.
// Nothing that is not in a state file is touched.
func Clean(dir string, out io.Writer) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		fmt.Fprintf(out, "no lab recorded in %s\n", dir)
		return nil
	}
	var errs []error
	for _, f := range files {
		if err := cleanOne(dir, f, out); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

func cleanOne(dir, file string, out io.Writer) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("reading lab state: %w", err)
	}
	if !validPrefix(st.Prefix) {
		return fmt.Errorf("lab state names prefix %q, which is not a lab's", st.Prefix)
	}
	if !st.Kept && st.Owner.alive() {
		fmt.Fprintf(out, "lab %s is still running as process %d; stop that (Ctrl-C) instead\n", st.Prefix, st.Owner.PID)
		return nil
	}
	var errs []error
	for _, p := range st.Processes {
		if err := p.stop(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	removed := 0
	for _, name := range st.Namespaces {
		if !strings.HasPrefix(name, st.Prefix) || filepath.Base(name) != name {
			errs = append(errs, fmt.Errorf("namespace %q does not carry the lab's prefix %s; left alone", name, st.Prefix))
			continue
		}
		if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := vnetns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", name, err))
			continue
		}
		removed++
	}
	if work := filepath.Clean(st.Dir); filepath.Dir(work) == filepath.Clean(dir) && filepath.Base(work) == strings.TrimSuffix(st.Prefix, "-") {
		if err := os.RemoveAll(work); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(file); err != nil {
			errs = append(errs, err)
		}
	}
	fmt.Fprintf(out, "lab %s: stopped %d processes, removed %d namespaces\n", st.Prefix, len(st.Processes), removed)
	return errors.Join(errs...)
}

// validPrefix accepts the netns helper's prefixes, "plb-<pid>-<n>-".
func validPrefix(p string) bool {
	parts := strings.Split(p, "-")
	if len(parts) != 4 || parts[0] != "plb" || parts[3] != "" {
		return false
	}
	for _, n := range parts[1:3] {
		if _, err := strconv.Atoi(n); err != nil {
			return false
		}
	}
	return true
}

// Leftovers lists namespaces whose names start with prefix.
func Leftovers(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
