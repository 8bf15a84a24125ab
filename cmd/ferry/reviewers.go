package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
)

// reviewersCmd is `ferry reviewers list|add|remove`: the review group's
// membership, on a reviewer of a group (docs/operations.md, "Changing the
// group").
func reviewersCmd(g *globals) *cobra.Command {
	m := &cobra.Command{Use: "reviewers", Short: "List the review group's reviewers with their state; add a reviewer that `reviewers` lists, or remove one"}
	m.AddCommand(&cobra.Command{Use: "list", Short: "List the review group's reviewers: each one's state and applied log index, and the leader", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var out struct {
				Group *node.GroupStatus `json:"review_group"`
			}
			if err := c.call("GET", "/api/v1/reviewers", nil, &out); err != nil {
				return err
			}
			if out.Group == nil {
				return fmt.Errorf("the admin API answered no review group")
			}
			return printReviewers(g, cmd.OutOrStdout(), out.Group)
		}})
	for _, verb := range []string{"add", "remove"} {
		short := "add a reviewer to the group (it must be in every node's `reviewers`); answers once it is in the group's configuration"
		if verb == "remove" {
			short = "remove a reviewer from the group (removing the leader makes it step down); the others go on deciding"
		}
		m.AddCommand(&cobra.Command{Use: verb + " PEER_ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if _, err := peer.Decode(args[0]); err != nil {
					return fmt.Errorf("%q is not a peer id (the 12D3KooW... that `ferry init` printed on the reviewer): %w", args[0], err)
				}
				c, err := g.client()
				if err != nil {
					return err
				}
				var out struct {
					PeerID string   `json:"peer_id"`
					Name   string   `json:"name"`
					Voters []string `json:"voters"`
				}
				if verb == "add" {
					err = c.call("POST", "/api/v1/reviewers", map[string]string{"peer_id": args[0]}, &out)
				} else {
					err = c.call("DELETE", "/api/v1/reviewers/"+url.PathEscape(args[0]), nil, &out)
				}
				if err != nil {
					return err
				}
				if g.json {
					return g.emit(cmd.OutOrStdout(), out, nil)
				}
				what := "added to"
				if verb == "remove" {
					what = "removed from"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "reviewer %s (%s) %s the review group; it has %d reviewer(s) now\n", out.Name, out.PeerID, what, len(out.Voters))
				return nil
			}})
	}
	return m
}

func printReviewers(g *globals, w io.Writer, gs *node.GroupStatus) error {
	return g.emit(w, gs, func(tw *tabwriter.Writer) {
		if gs.Error != "" {
			fmt.Fprintf(tw, "# %s\n", gs.Error)
		}
		fmt.Fprintln(tw, "NAME\tPEER ID\tSUFFRAGE\tSTATE\tAPPLIED\tHEARD")
		for _, sv := range gs.Servers {
			name := dash(sv.Name)
			if sv.Self {
				name += " (this node)"
			}
			state, applied, heard := "not answering: "+sv.Error, "-", "-"
			if sv.Status != nil {
				state, applied = strings.ToLower(sv.Status.State), fmt.Sprint(sv.Status.AppliedIndex)
			}
			if !sv.Self && !sv.LastHeard.IsZero() {
				heard = g.when(sv.LastHeard)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, sv.ID, strings.ToLower(sv.Suffrage), state, applied, heard)
		}
	})
}
