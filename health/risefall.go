package health

// status is one target's health as the rise/fall rule sees it.
type status struct {
	Up bool
	// EverUp records that the target has been up since it was added (or started up, with
	// InitialUp). Until then a single passed check brings it up; see next.
	EverUp    bool
	Successes int // consecutive passed checks
	Failures  int // consecutive failed checks
}

// initialStatus is where a newly added target starts: down until its first passed check, or up
// when the service sets InitialUp.
func initialStatus(initialUp bool) status {
	return status{Up: initialUp, EverUp: initialUp}
}

// next applies one check result to s.
//
//   - An up target goes down after fall consecutive failed checks.
//   - A down target that has been up before comes back after rise consecutive passed checks.
//   - A target that has never been up (added with InitialUp false) comes up on its first passed
//     check. Nothing is protected by waiting rise intervals then: no traffic was going to it, and
//     at start-up a whole pool would otherwise refuse clients for rise x interval. Hysteresis is
//     for servers that were seen to fail, which is what rise is about.
//
// rise and fall below 1 count as 1.
func next(s status, ok bool, rise, fall int) status {
	rise = max(rise, 1)
	fall = max(fall, 1)
	if ok {
		s.Failures = 0
		s.Successes++
		if !s.Up && (!s.EverUp || s.Successes >= rise) {
			s.Up = true
			s.EverUp = true
		}
		return s
	}
	s.Successes = 0
	s.Failures++
	if s.Up && s.Failures >= fall {
		s.Up = false
	}
	return s
}
