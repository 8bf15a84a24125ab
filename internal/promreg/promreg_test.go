package promreg

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterReturnsDuplicates(t *testing.T) {
	reg := prometheus.NewRegistry()
	c1 := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_test_total", Help: "x"})
	c2 := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_test_total", Help: "x"})
	if err := Register(reg, c1); err != nil {
		t.Fatal(err)
	}
	err := Register(reg, c2)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.Contains(err.Error(), "ferry_test_total") {
		t.Fatalf("second registration: %v, want an AlreadyRegisteredError naming the metric", err)
	}
	if err := Register(nil, c2); err != nil {
		t.Fatalf("nil registerer: %v", err)
	}
}
