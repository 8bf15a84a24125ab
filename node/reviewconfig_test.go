package node_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferrynet/ferry/node"
)

// TestSpecConfigLoads: the ferry.yaml of SPEC.md, copied as it is, loads and
// validates (reviewers and review.approvals used to be unknown keys).
func TestSpecConfigLoads(t *testing.T) {
	spec := `name: A                   # label shown in tables (applicant, reviewer, receiver)
network: ferry            # members share it: DHT rendezvous key, pubsub topic names
listen: [/ip4/0.0.0.0/tcp/4001, /ip4/0.0.0.0/udp/4001/quic-v1]
bootstrap: []             # multiaddrs with /p2p/<peer id>
partners: []              # peer ids that receive this node's owned resources
members: []               # peer ids allowed in the network; empty: any peer that joins it
reviewer: ""              # peer id of the reviewer; empty: no review flow (a group of one)
reviewers: []             # the review group: peer ids; a majority must be up to decide (replaces ` + "`reviewer`" + `)
review: {approvals: 1}    # distinct reviewer nodes that must accept the same data before it is decided
private_network_key: ""   # path to a libp2p pre-shared key; empty: none
nats: {url: "", listen: 127.0.0.1:4222, prefix: ferry}   # empty url: embedded server
admin: {listen: 127.0.0.1:7480}
limits: {max_message_bytes: 1048576}
`
	p := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := node.LoadFile(p)
	if err != nil {
		t.Fatalf("SPEC's ferry.yaml: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("SPEC's ferry.yaml: %v", err)
	}
	if c.Review.Approvals != 1 || len(c.ReviewGroup()) != 0 || c.ReviewerID() != "" {
		t.Fatalf("approvals %d group %v reviewer %q", c.Review.Approvals, c.ReviewGroup(), c.ReviewerID())
	}
}

// TestReviewGroupConfig: reviewer, reviewers and review.approvals, each
// refusal naming its key and where it was set.
func TestReviewGroupConfig(t *testing.T) {
	a, b := newPeerID(t).String(), newPeerID(t).String()
	if c := node.Default(); c.Review.Approvals != node.DefaultApprovals || node.DefaultApprovals != 1 {
		t.Fatalf("default approvals %d", c.Review.Approvals)
	}
	good := []struct {
		name      string
		set       func(c *node.Config)
		reviewer  string
		group     []string
		approvals int
	}{
		{"no reviewer", func(*node.Config) {}, "", nil, 1},
		{"reviewer", func(c *node.Config) { c.Reviewer = a }, a, []string{a}, 1},
		{"reviewers of one", func(c *node.Config) { c.Reviewers = []string{a} }, a, []string{a}, 1},
		{"both, the same", func(c *node.Config) { c.Reviewer, c.Reviewers = a, []string{a} }, a, []string{a}, 1},
		{"approvals 1 of 1", func(c *node.Config) { c.Reviewer, c.Review.Approvals = a, 1 }, a, []string{a}, 1},
		{"a group of two", func(c *node.Config) { c.Reviewers = []string{a, b} }, a, []string{a, b}, 1},
		{"a group, reviewer in it, 2 approvals", func(c *node.Config) { c.Reviewer, c.Reviewers, c.Review.Approvals = b, []string{a, b}, 2 },
			b, []string{a, b}, 2},
	}
	for _, tc := range good {
		c := node.Default()
		tc.set(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: refused: %v", tc.name, err)
			continue
		}
		if c.ReviewerID() != tc.reviewer || !slices.Equal(c.ReviewGroup(), tc.group) || c.Review.Approvals != tc.approvals {
			t.Errorf("%s: reviewer %q group %v approvals %d", tc.name, c.ReviewerID(), c.ReviewGroup(), c.Review.Approvals)
		}
	}
	bad := []struct {
		key  string
		set  func(c *node.Config)
		want string
	}{
		{"reviewers[0]", func(c *node.Config) { c.Reviewers = []string{"carol"} }, `"carol" is not a peer id`},
		{"reviewers[1]", func(c *node.Config) { c.Reviewers = []string{a, a} }, "is listed twice (also reviewers[0])"},
		{"reviewer", func(c *node.Config) { c.Reviewer, c.Reviewers = a, []string{b} }, "is not in `reviewers`"},
		{"review.approvals", func(c *node.Config) { c.Reviewer, c.Review.Approvals = a, 0 }, "0 is below 1"},
		{"review.approvals", func(c *node.Config) { c.Review.Approvals = -3 }, "-3 is below 1"},
		{"review.approvals", func(c *node.Config) { c.Reviewer, c.Review.Approvals = a, 2 }, "2 is more than the review group's 1 reviewer(s)"},
		{"review.approvals", func(c *node.Config) { c.Review.Approvals = 2 }, "2 is more than the review group's 0 reviewer(s)"},
		{"review.approvals", func(c *node.Config) { c.Reviewers, c.Review.Approvals = []string{a, b}, 3 }, "3 is more than the review group's 2"},
	}
	for _, tc := range bad {
		c := node.Default()
		tc.set(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted %q %v %d", tc.key, c.Reviewer, c.Reviewers, c.Review.Approvals)
			continue
		}
		if prefix := "config: " + tc.key + ": "; !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %q, want %q ... %q", tc.key, err, prefix, tc.want)
		}
	}

	// From a file: the line is named, and the keys are known.
	p := filepath.Join(t.TempDir(), "ferry.yaml")
	for _, tc := range []struct{ yaml, want string }{
		{"reviewers: [" + a + ", " + a + "]\n", ":1: reviewers[1]: " + a + " is listed twice (also reviewers[0])"},
		{"reviewer: " + a + "\nreview:\n  approvals: 2\n", ":3: review.approvals: 2 is more than the review group's 1 reviewer(s)"},
		{"review:\n  aprovals: 2\n", ":2: unknown key `review.aprovals` (did you mean `review.approvals`?)"},
		{"reviewers: " + a + "\n", ":1: `reviewers` must be a list of peer ids"},
		{"review:\n  approvals: two\n", ":2: `review.approvals` must be a whole number"},
	} {
		if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := node.LoadFile(p)
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.HasPrefix(err.Error(), p+tc.want) {
			t.Errorf("%q: %v, want %s", tc.yaml, err, p+tc.want)
		}
	}

	// The environment and flags reach both keys.
	c := node.Default()
	t.Setenv("FERRY_REVIEWERS", a)
	t.Setenv("FERRY_REVIEW_APPROVALS", "1")
	if err := c.ApplyEnv(os.LookupEnv); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil || c.ReviewerID() != a {
		t.Fatalf("from the environment: %v, reviewer %q", err, c.ReviewerID())
	}
}
