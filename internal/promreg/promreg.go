// Package promreg registers a component's Prometheus collectors and returns
// the failure (a duplicate name, a conflicting help text or label set)
// instead of dropping it or panicking. It must not create collectors itself.
package promreg

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers every collector with reg, stopping at the first
// failure. A nil reg registers nothing.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metric %s: %w", describe(c), err)
		}
	}
	return nil
}

// describe names a collector by its first metric.
func describe(c prometheus.Collector) string {
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	name := "?"
	for d := range ch {
		if name == "?" {
			name = d.String()
		}
	}
	return name
}
