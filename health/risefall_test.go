package health

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNext(t *testing.T) {
	const P, F = true, false // passed, failed check
	type step struct {
		ok   bool
		want status
	}
	tests := []struct {
		name       string
		start      status
		rise, fall int
		steps      []step
	}{
		{
			name: "never up: first pass brings it up", start: initialStatus(false), rise: 2, fall: 3,
			steps: []step{
				{F, status{Failures: 1}},
				{F, status{Failures: 2}},
				{P, status{Up: true, EverUp: true, Successes: 1}},
			},
		},
		{
			name: "up goes down after fall failures; a pass in between resets", start: initialStatus(true), rise: 2, fall: 3,
			steps: []step{
				{F, status{Up: true, EverUp: true, Failures: 1}},
				{F, status{Up: true, EverUp: true, Failures: 2}},
				{P, status{Up: true, EverUp: true, Successes: 1}},
				{F, status{Up: true, EverUp: true, Failures: 1}},
				{F, status{Up: true, EverUp: true, Failures: 2}},
				{F, status{Up: false, EverUp: true, Failures: 3}},
				{F, status{Up: false, EverUp: true, Failures: 4}},
			},
		},
		{
			name: "down after being up needs rise passes; a failure in between resets", rise: 3, fall: 1,
			start: status{EverUp: true, Failures: 5},
			steps: []step{
				{P, status{EverUp: true, Successes: 1}},
				{P, status{EverUp: true, Successes: 2}},
				{F, status{EverUp: true, Failures: 1}},
				{P, status{EverUp: true, Successes: 1}},
				{P, status{EverUp: true, Successes: 2}},
				{P, status{Up: true, EverUp: true, Successes: 3}},
				{P, status{Up: true, EverUp: true, Successes: 4}},
			},
		},
		{
			name: "full cycle from initial down", start: initialStatus(false), rise: 2, fall: 2,
			steps: []step{
				{P, status{Up: true, EverUp: true, Successes: 1}},
				{F, status{Up: true, EverUp: true, Failures: 1}},
				{F, status{EverUp: true, Failures: 2}},
				{P, status{EverUp: true, Successes: 1}},
				{P, status{Up: true, EverUp: true, Successes: 2}},
			},
		},
		{
			name: "rise and fall of 0 count as 1", start: initialStatus(true), rise: 0, fall: 0,
			steps: []step{
				{F, status{EverUp: true, Failures: 1}},
				{P, status{Up: true, EverUp: true, Successes: 1}},
				{F, status{EverUp: true, Failures: 1}},
			},
		},
		{
			name: "rise 1 fall 1 follows every result", start: initialStatus(false), rise: 1, fall: 1,
			steps: []step{
				{F, status{Failures: 1}},
				{P, status{Up: true, EverUp: true, Successes: 1}},
				{F, status{EverUp: true, Failures: 1}},
				{P, status{Up: true, EverUp: true, Successes: 1}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.start
			for i, st := range tt.steps {
				s = next(s, st.ok, tt.rise, tt.fall)
				if diff := cmp.Diff(st.want, s); diff != "" {
					t.Fatalf("step %d (ok=%v): status mismatch (-want +got):\n%s", i+1, st.ok, diff)
				}
			}
		})
	}
}
