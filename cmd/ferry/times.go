package main

import (
	"fmt"
	"time"
)

// now is the clock the tables read (tests pin it).
var now = time.Now

// when prints t for a person: relative ("3m ago", "in 5s") unless absolute
// times were asked for (--absolute), then RFC 3339 in UTC.
func (g *globals) when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if g.absolute {
		return t.UTC().Format(time.RFC3339)
	}
	return relative(t, now())
}

// relative says how far t is from ref in the largest one or two units.
func relative(t, ref time.Time) string {
	d := ref.Sub(t)
	suffix := " ago"
	if d < 0 {
		d, suffix = -d, ""
		if d >= time.Second {
			return "in " + span(d)
		}
	}
	if d < time.Second {
		return "just now"
	}
	return span(d) + suffix
}

func span(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
		if s == 0 || m >= 10 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s)
	case d < 48*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 || h >= 10 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// unix turns the ledger's Unix seconds into a time (0: none).
func unix(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}
