package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// stat summarises the repetitions of one figure.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// spreadPct is the largest distance from the median to the minimum or maximum, in percent of
// the median.
func (s stat) spreadPct() float64 {
	if s.Median == 0 {
		return 0
	}
	return 100 * math.Max(s.Max-s.Median, s.Median-s.Min) / math.Abs(s.Median)
}

func summarize(vs []float64) stat {
	slices.Sort(vs)
	n := len(vs)
	med := vs[n/2]
	if n%2 == 0 {
		med = (vs[n/2-1] + vs[n/2]) / 2
	}
	return stat{Median: med, Min: vs[0], Max: vs[n-1], N: n}
}

type report struct {
	o       *options
	machine *Machine
	ws      []*workload
	cands   []*candidate
	runs    []Run
	// stats[workload][metric][candidate], over counted runs without error.
	stats map[string]map[string]map[string]stat
	files []string
}

func newReport(o *options, m *Machine, ws []*workload, cands []*candidate, runs []Run) *report {
	r := &report{o: o, machine: m, ws: ws, cands: cands, runs: runs, stats: map[string]map[string]map[string]stat{}}
	vals := map[[3]string][]float64{}
	for _, run := range runs {
		if run.Rep == 0 || run.Error != "" {
			continue
		}
		for k, v := range run.Metrics {
			key := [3]string{run.Workload, k, run.Candidate}
			vals[key] = append(vals[key], v)
		}
	}
	for k, vs := range vals {
		if r.stats[k[0]] == nil {
			r.stats[k[0]] = map[string]map[string]stat{}
		}
		if r.stats[k[0]][k[1]] == nil {
			r.stats[k[0]][k[1]] = map[string]stat{}
		}
		r.stats[k[0]][k[1]][k[2]] = summarize(vs)
	}
	return r
}

func (r *report) stat(w, metric, cand string) (stat, bool) {
	s, ok := r.stats[w][metric][cand]
	return s, ok
}

func (r *report) has(name string) bool {
	return slices.ContainsFunc(r.cands, func(c *candidate) bool { return c.name == name })
}

// formatNum prints a figure with the given decimals, or with thousands separators for
// large whole numbers.
func formatNum(v float64, digits int) string {
	if digits == 0 {
		s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
		neg := strings.HasPrefix(s, "-")
		s = strings.TrimPrefix(s, "-")
		for i := len(s) - 3; i > 0; i -= 3 {
			s = s[:i] + "," + s[i:]
		}
		if neg {
			s = "-" + s
		}
		return s
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

// cell renders one candidate's figure: median, spread and ratios to direct and HAProxy.
func (r *report) cell(w *workload, m metricSpec, c *candidate) string {
	if m.proxy && c.direct() {
		return "—"
	}
	if w.udp && !c.udp {
		return "n/a"
	}
	s, ok := r.stat(w.name, m.key, c.name)
	if !ok {
		if r.failed(w.name, c.name) {
			return "failed"
		}
		return "—"
	}
	out := formatNum(s.Median, m.digits)
	lo, hi := formatNum(s.Min, m.digits), formatNum(s.Max, m.digits)
	switch {
	case s.N > 1 && !m.ratio && lo != hi:
		// Counts and percentages: the range says more than a relative spread.
		out += fmt.Sprintf(" (%s–%s)", lo, hi)
	case s.N > 1 && m.ratio:
		out += fmt.Sprintf(" ±%.0f%%", s.spreadPct())
	}
	if s.N != r.o.reps {
		out += fmt.Sprintf(" (n=%d)", s.N)
	}
	if !m.ratio {
		return out
	}
	var ratios []string
	for _, ref := range []struct{ cand, tag string }{{"direct", "D"}, {"haproxy", "H"}} {
		if ref.cand == c.name || !r.has(ref.cand) {
			continue
		}
		if rs, ok := r.stat(w.name, m.key, ref.cand); ok && rs.Median != 0 {
			ratios = append(ratios, fmt.Sprintf("%.2f×%s", s.Median/rs.Median, ref.tag))
		}
	}
	if len(ratios) > 0 {
		out += " (" + strings.Join(ratios, " ") + ")"
	}
	return out
}

// noisy counts the counted runs that were noisy.
func (r *report) noisy() (n, total int) {
	for _, run := range r.runs {
		if run.Rep > 0 && run.Error == "" {
			total++
			if run.Noisy {
				n++
			}
		}
	}
	return n, total
}

func (r *report) failed(w, cand string) bool {
	for _, run := range r.runs {
		if run.Workload == w && run.Candidate == cand && run.Error != "" {
			return true
		}
	}
	return false
}

// markdownTable is the results table: a row per figure, a column per candidate.
func (r *report) markdownTable() string {
	var b strings.Builder
	b.WriteString("| workload | figure |")
	for _, c := range r.cands {
		b.WriteString(" " + c.title + " |")
	}
	b.WriteString("\n|---|---|")
	for range r.cands {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, w := range r.ws {
		for i, m := range append(slices.Clone(w.metrics), coreMetrics...) {
			name := ""
			if i == 0 {
				name = "**" + w.name + "**"
			}
			label := m.label
			if m.ratio || m.higher {
				if m.higher {
					label += " ↑"
				} else {
					label += " ↓"
				}
			}
			fmt.Fprintf(&b, "| %s | %s |", name, label)
			for _, c := range r.cands {
				b.WriteString(" " + r.cell(w, m, c) + " |")
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

const legend = "Each cell: median of the repetitions, ± the largest distance from the median to the " +
	"minimum or maximum (in % of the median) or, for counts and percentages, (minimum–maximum), then the ratio of the median to the direct path (×D) " +
	"and to HAProxy with `option splice-auto` (×H). ↑ higher is better, ↓ lower is better. " +
	"Proxy CPU is utime+stime of the proxy's processes (all threads, nginx's worker included) " +
	"from /proc/PID/stat over the run, divided by the work done; RSS is VmRSS, descriptors " +
	"are /proc/PID/fd, both measured while the idle connections are held, minus the figures " +
	"before they were opened. Core busy % is from /proc/stat over the run; \"not the proxy's CPU\" is core 0's busy time less the proxy's own CPU time: other work on the machine, interrupts. — : not applicable " +
	"(the direct path has no proxy); n/a: the proxy does not carry UDP."

func (r *report) workloadNotes() string {
	var b strings.Builder
	for _, w := range r.ws {
		fmt.Fprintf(&b, "- **%s**: %s\n", w.name, w.title)
	}
	return b.String()
}

func (r *report) markdown() string {
	m := r.machine
	var b strings.Builder
	fmt.Fprintf(&b, "# pairlb benchmark\n\n")
	fmt.Fprintf(&b, "%s on %s (%d cores, %d MiB), kernel %s; took %s.\n\n", m.Date, m.CPUModel, m.Cores, m.MemMiB, m.Kernel, m.Elapsed)
	fmt.Fprintf(&b, "- %s\n- %s\n- %s\n- reproduce: `%s`\n\n", m.Pinning, m.Settings, m.quietNote(), m.Command)
	b.WriteString(r.markdownTable())
	b.WriteString("\n" + legend + "\n\n")
	if n, total := r.noisy(); n > 0 {
		fmt.Fprintf(&b, "**%d of %d runs were noisy**: core 0 was more than %d%% busy with work other than the proxy's (see the \"not the proxy's CPU\" rows and `noisy` in results.json).\n\n", n, total, noisyPct)
	}
	b.WriteString(r.workloadNotes())
	var fails []string
	for _, run := range r.runs {
		if run.Error != "" {
			fails = append(fails, fmt.Sprintf("- %s #%d %s: %s", run.Workload, run.Rep, run.Candidate, firstLine(run.Error)))
		}
	}
	if len(fails) > 0 {
		b.WriteString("\n## Failed runs\n\n" + strings.Join(fails, "\n") + "\n")
	}
	var notes []string
	for _, run := range r.runs {
		for _, n := range run.Notes {
			notes = append(notes, fmt.Sprintf("- %s #%d %s: %s", run.Workload, run.Rep, run.Candidate, n))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n## Notes\n\n" + strings.Join(notes, "\n") + "\n")
	}
	b.WriteString("\n## Versions\n\n")
	for _, v := range m.Versions {
		fmt.Fprintf(&b, "- %s: `%s`\n", v.Name, v.Version)
	}
	return b.String()
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// write puts results.md, results.json, versions.txt and chart.png in dir.
func (r *report) write(dir string) error {
	save := func(name string, data []byte) error {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		r.files = append(r.files, p)
		return nil
	}
	if err := save("results.md", []byte(r.markdown())); err != nil {
		return err
	}
	js, err := json.MarshalIndent(struct {
		Machine *Machine                              `json:"machine"`
		Summary map[string]map[string]map[string]stat `json:"summary"`
		Runs    []Run                                 `json:"runs"`
	}{r.machine, r.stats, r.runs}, "", "  ")
	if err != nil {
		return err
	}
	if err := save("results.json", js); err != nil {
		return err
	}
	var v strings.Builder
	fmt.Fprintf(&v, "cpu: %s\ncores: %d\nmemory: %d MiB\n", r.machine.CPUModel, r.machine.Cores, r.machine.MemMiB)
	for _, x := range r.machine.Versions {
		fmt.Fprintf(&v, "%s: %s\n", x.Name, x.Version)
	}
	if err := save("versions.txt", []byte(v.String())); err != nil {
		return err
	}
	png := filepath.Join(dir, "chart.png")
	if err := r.chart(png); err != nil {
		fmt.Fprintf(os.Stderr, "bench: chart: %v\n", err)
	} else {
		r.files = append(r.files, png)
	}
	return nil
}

const (
	readmeBegin = "<!-- bench:begin -->"
	readmeEnd   = "<!-- bench:end -->"
)

// readmeBlock reads a README and finds its bench block: the text before the block's
// content, and the text from the end marker on.
func readmeBlock(path string) (before, after string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("-readme: %w", err)
	}
	s := string(b)
	i := strings.Index(s, readmeBegin)
	j := strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return "", "", fmt.Errorf("-readme %s: no %s ... %s block to replace; add the two markers where the results go", path, readmeBegin, readmeEnd)
	}
	return s[:i+len(readmeBegin)], s[j:], nil
}

// updateReadme replaces what lies between the bench markers of a README with the results.
func (r *report) updateReadme(path string) error {
	before, after, err := readmeBlock(path)
	if err != nil {
		return err
	}
	m := r.machine
	noise := ""
	if n, total := r.noisy(); n > 0 {
		noise = fmt.Sprintf(" %d of %d runs were noisy (core 0 more than %d%% busy with other work).", n, total, noisyPct)
	}
	block := fmt.Sprintf("\n%s — %s, %d cores, kernel %s. %s. %s.%s\n\n%s\n%s\n\nReproduce: `%s`\n",
		m.Date, m.CPUModel, m.Cores, m.Kernel, upperFirst(m.Pinning), m.Settings, noise, r.markdownTable(), legend, m.Command)
	return os.WriteFile(path, []byte(before+block+after), 0o644)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
