package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// requestDetail prints one request as a detail view: its fields, the table
// row it changes as this node holds it now, the change field by field, and
// who each decision goes to.
func (g *globals) requestDetail(w *tabwriter.Writer, d node.RequestDetail) {
	r := d.Request
	fmt.Fprintf(w, "request\t%d (origin %s)\n", r.ID, r.Origin)
	fmt.Fprintf(w, "change\t%s %s row %d\n", r.Type, r.TableName, r.TableID)
	status := r.Status
	if r.Sequence != 0 {
		status += fmt.Sprintf(" (decision sequence %d)", r.Sequence)
	}
	fmt.Fprintf(w, "status\t%s\n", status)
	fmt.Fprintf(w, "applicant\t%s (%s)\n", r.Applicant, r.ApplicantID)
	fmt.Fprintf(w, "reviewer\t%s\n", r.Reviewer)
	fmt.Fprintf(w, "created\t%s\n", g.when(unix(r.CreatedAt)))
	fmt.Fprintf(w, "description\tsender: %s\n", dash(r.Description.Sender))
	if r.Description.Receiver != "" {
		fmt.Fprintf(w, "\treceiver: %s\n", r.Description.Receiver)
	}
	fmt.Fprintf(w, "data\t%s\n", compact(r.Data))
	if len(r.EditedData) > 0 {
		fmt.Fprintf(w, "edited data\t%s (an edit waiting for approvals: accepting approves it)\n", compact(r.EditedData))
	}
	if a := g.approvals(r); a != "" {
		fmt.Fprintf(w, "approvals\t%s\n", a)
	}
	cur := "(none: the row does not exist here)"
	if string(d.Current) != "null" && len(d.Current) > 0 {
		cur = compact(d.Current)
	}
	fmt.Fprintf(w, "current row\t%s\n", cur)
	if r.Conflict != "" {
		fmt.Fprintf(w, "conflict\t%s\n", r.Conflict)
	}
	if r.Status == "waiting" {
		fmt.Fprintf(w, "accept goes to\t%s\n", names(d.Receivers.Accept))
		fmt.Fprintf(w, "reject goes to\t%s\n", names(d.Receivers.Reject))
	}
	fmt.Fprintln(w)
	after := "AFTER ACCEPT"
	if r.Status != "waiting" {
		after = "AFTER (applied to the row now)"
	}
	fmt.Fprintf(w, "FIELD\tCHANGE\tCURRENT\t%s\n", after)
	if len(d.Diff) == 0 {
		fmt.Fprintln(w, "(no fields)\t\t\t")
	}
	for _, f := range d.Diff {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", f.Field, f.Change, rawCell(f.Before), rawCell(f.After))
	}
}

// approvals says who approved a waiting request and what it still needs
// ("1 of 2: S 3s ago; waiting for 1 more"); "" when one approval decides
// and none is kept.
func (g *globals) approvals(r review.Row) string {
	if r.Status != "waiting" || (r.ApprovalsRequired <= 1 && len(r.Approvals) == 0) {
		return ""
	}
	var who []string
	for _, a := range r.Approvals {
		who = append(who, a.Reviewer+" "+g.when(unix(a.At)))
	}
	s := fmt.Sprintf("%d of %d", len(r.Approvals), r.ApprovalsRequired)
	if len(who) > 0 {
		s += ": " + strings.Join(who, ", ")
	}
	if n := r.ApprovalsRequired - len(r.Approvals); n > 0 {
		s += fmt.Sprintf("; waiting for %d more", n)
	}
	return s
}

func rawCell(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "-"
	}
	return compact(raw)
}

func names(ns []string) string {
	if len(ns) == 0 {
		return "no other node"
	}
	return strings.Join(ns, ", ")
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print Ferry's version, the revision it was built from and the Go version", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := map[string]string{"version": node.Version, "revision": node.BuildRevision(), "go": runtime.Version()}
			if g.json {
				return g.emit(cmd.OutOrStdout(), v, nil)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ferry %s (revision %s, %s)\n", v["version"], v["revision"], v["go"])
			return nil
		}}
}
