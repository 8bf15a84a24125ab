package main

import (
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
)

// membersCmd is `ferry members list|add|remove`: who is a member of the
// local node, who left and why; removals and adds are kept in its store
// (docs/operations.md, "Members that leave").
func membersCmd(g *globals) *cobra.Command {
	m := &cobra.Command{Use: "members", Short: "List members and the peers that left; remove a member, or add one back (persisted in the node's store)"}
	m.AddCommand(&cobra.Command{Use: "list", Short: "List members, and the peers that left (record expired, removed) with the reason", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rows, err := listAll[node.MemberRow](c, "/api/v1/members", nil, "members")
			if err != nil {
				return err
			}
			return printMembers(g, cmd.OutOrStdout(), rows)
		}})
	for _, verb := range []string{"add", "remove"} {
		short := "add a member back after a removal (or one that `members` in ferry.yaml does not list)"
		if verb == "remove" {
			short = "remove a member: no longer addressed, its pending acknowledgement rows closed, refused until `ferry members add`"
		}
		m.AddCommand(&cobra.Command{Use: verb + " PEER_ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				var out struct {
					Member node.MemberRow `json:"member"`
				}
				if verb == "add" {
					err = c.call("POST", "/api/v1/members", map[string]string{"peer_id": args[0]}, &out)
				} else {
					err = c.call("DELETE", "/api/v1/members/"+url.PathEscape(args[0]), nil, &out)
				}
				if err != nil {
					return err
				}
				if g.json {
					return g.emit(cmd.OutOrStdout(), out.Member, nil)
				}
				r := out.Member
				switch r.State {
				case "member":
					fmt.Fprintf(cmd.OutOrStdout(), "member %s (%s): a member\n", r.Name, r.PeerID)
				case "allowed":
					fmt.Fprintf(cmd.OutOrStdout(), "member %s (%s): a member once its membership record arrives\n", r.Name, r.PeerID)
				default:
					fmt.Fprintf(cmd.OutOrStdout(), "member %s (%s): %s: %s\n", r.Name, r.PeerID, r.State, r.Reason)
				}
				return nil
			}})
	}
	return m
}

func printMembers(g *globals, w io.Writer, rows []node.MemberRow) error {
	return g.emit(w, rows, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAME\tPEER ID\tSTATE\tCONNECTED\tRECORD EXPIRES\tLEFT\tREASON")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\n", r.Name, r.PeerID, r.State, r.Connected, g.when(r.RecordExpiresAt),
				g.when(r.LeftAt), dash(r.Reason))
		}
	})
}
