package ferry

import (
	"regexp"
	"strings"
	"testing"
)

// TestValidName: the loop accepts what ^[A-Za-z0-9_-]{1,64}$ accepts, and
// only that.
func TestValidName(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	cases := []string{"", "a", "vm", "A_b-9", strings.Repeat("x", 64), strings.Repeat("x", 65), "a.b", "a b", "a>", "*",
		"é", "a\x00", "-", "_", "Z0", "a/b", "tab\t"}
	for c := 0; c < 256; c++ {
		cases = append(cases, string([]byte{byte(c)}), "x"+string([]byte{byte(c)}))
	}
	for _, s := range cases {
		if got, want := ValidName(s), re.MatchString(s); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", s, got, want)
		}
	}
}
