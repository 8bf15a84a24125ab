package propagate

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// namedRoles names each peer from a map the test changes.
type namedRoles struct {
	fuzzRoles
	names map[peer.ID]string
}

func (r namedRoles) Name(p peer.ID) string { return r.names[p] }

// TestReceiversFollowTheirNames: the rendering kept for the next reply is
// given again only for the same receivers under the same names; a rename,
// another receiver or one fewer renders anew, in the order of the names.
func TestReceiversFollowTheirNames(t *testing.T) {
	_, self := fixedKey(t, 1)
	_, a := fixedKey(t, 2)
	_, b := fixedKey(t, 3)
	roles := namedRoles{fuzzRoles{self: self}, map[peer.ID]string{a: "alpha", b: "beta"}}
	s := &Service{roles: roles}
	for i, c := range []struct {
		ps     []peer.ID
		rename string // b's name before the call
		want   string
	}{
		{[]peer.ID{a, b, self}, "", "[alpha:a beta:b]"},
		{[]peer.ID{a, b, self}, "", "[alpha:a beta:b]"},
		{[]peer.ID{a, b, self}, "aardvark", "[aardvark:b alpha:a]"},
		{[]peer.ID{a, self}, "", "[alpha:a]"},
		{[]peer.ID{a, b}, "", "[aardvark:b alpha:a]"},
		{nil, "", "[]"},
	} {
		if c.rename != "" {
			roles.names[b] = c.rename
		}
		var out []struct{ ID, Name string }
		if err := json.Unmarshal(s.receivers(c.ps), &out); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, x := range out {
			who := map[string]string{a.String(): "a", b.String(): "b"}[x.ID]
			got = append(got, x.Name+":"+who)
		}
		if fmt.Sprint(got) != c.want {
			t.Fatalf("call %d: %v, want %s", i, got, c.want)
		}
	}
}
