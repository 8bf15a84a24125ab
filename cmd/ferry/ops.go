package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

func operatorCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{statusCmd(g), peersCmd(g), partnersCmd(g), membersCmd(g), reviewersCmd(g), requestsCmd(g), acksCmd(g), rowsCmd(g),
		resourcesCmd(g), publishCmd(g), submitCmd(g), searchCmd(g), watchCmd(g), traceCmd(g)}
}

// emit prints v as indented JSON (--json) or through table.
func (g *globals) emit(w io.Writer, v any, table func(*tabwriter.Writer)) error {
	if g.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "status", Short: "Show the local node's state", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var out struct{ Status node.Status }
			if err := c.call("GET", "/api/v1/status", nil, &out); err != nil {
				return err
			}
			s := out.Status
			return g.emit(cmd.OutOrStdout(), s, func(w *tabwriter.Writer) {
				role := "member"
				if s.IsReviewer {
					role = "reviewer"
				}
				fmt.Fprintf(w, "name\t%s\npeer id\t%s\nnetwork\t%s\nrole\t%s\nversion\t%s\nstarted\t%s\n", s.Name, s.PeerID, s.Network, role, s.Version, g.when(s.StartedAt))
				fmt.Fprintf(w, "nats\t%s (embedded: %v)\nadmin\thttp://%s\n", s.NATS, s.NATSEmbedded, s.Admin)
				for _, a := range s.Addrs {
					fmt.Fprintf(w, "listen\t%s\n", a)
				}
				fmt.Fprintf(w, "reviewer\t%s\npartners\t%d\nmembers\t%d\nconnected\t%d\nstore version\t%d\ndecisions applied\t%d\npending acks\t%d\nlast catch-up\t%s\nconsole\thttp://%s/\n",
					dash(s.Reviewer), s.Partners, s.Members, s.Connected, s.StoreVersion, s.DecisionApplied, s.PendingAcks, g.when(s.LastCatchUp), s.Admin)
				if gs := s.ReviewGroup; gs != nil {
					fmt.Fprintf(w, "review group\t%s\n", groupLine(g, gs))
				}
				fmt.Fprintf(w, "health\t%s\n", healthLine(s.Health))
				fmt.Fprintf(w, "free disk\t%.0f MiB (reserve %.0f MiB)\n", float64(s.Health.Store.FreeBytes)/(1<<20), float64(s.Health.Store.MinFreeBytes)/(1<<20))
				if e := s.Health.Events; e != nil {
					state := "caught up"
					switch {
					case !e.OK:
						state = e.Reason
					case !e.CaughtUp:
						state = "catching up"
					}
					fmt.Fprintf(w, "events stream\t%s: through version %d, last sequence %d, %s\n", e.Stream, e.Through, e.LastSeq, state)
				}
			})
		}}
}

// groupLine says who leads the review group and how each reviewer stands:
// "leader B; A (this node): follower, applied 12; B: leader, applied 12;
// C: not answering (...)".
func groupLine(g *globals, gs *node.GroupStatus) string {
	parts := []string{"no leader known"}
	if gs.Leader != "" {
		parts[0] = "leader " + dash(gs.LeaderName)
	}
	if gs.Error != "" {
		parts = append(parts, gs.Error)
	}
	for _, sv := range gs.Servers {
		name := dash(sv.Name)
		if sv.Self {
			name += " (this node)"
		}
		switch {
		case sv.Status != nil:
			st := fmt.Sprintf("%s: %s, applied %d", name, strings.ToLower(sv.Status.State), sv.Status.AppliedIndex)
			if !sv.Self && !sv.LastHeard.IsZero() {
				st += ", heard " + g.when(sv.LastHeard)
			}
			parts = append(parts, st)
		default:
			parts = append(parts, name+": not answering ("+sv.Error+")")
		}
	}
	return strings.Join(parts, "; ")
}

// healthLine is "ok" or "unavailable: <reason>" (the readiness of /readyz).
func healthLine(h node.HealthReport) string {
	if h.Ready {
		return "ok"
	}
	return "unavailable: " + h.Reason
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printPeers(g *globals, w io.Writer, peers []node.PeerInfo) error {
	return g.emit(w, peers, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAME\tPEER ID\tROLES\tSTATE\tLAST SEEN\tADDRESSES")
		for _, p := range peers {
			state, seen := "down", g.when(p.LastSeen)
			if p.LastSeen.IsZero() {
				seen = "never"
			}
			if p.Connected {
				state, seen = "connected", "now"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.PeerID, strings.Join(p.Roles, ","), state, seen, strings.Join(p.Addrs, " "))
		}
	})
}

func peersCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "peers", Short: "List known peers: name, peer id, roles, addresses, last seen", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			peers, err := listAll[node.PeerInfo](c, "/api/v1/peers", nil, "peers")
			if err != nil {
				return err
			}
			return printPeers(g, cmd.OutOrStdout(), peers)
		}}
}

func partnersCmd(g *globals) *cobra.Command {
	p := &cobra.Command{Use: "partners", Short: "List, add or remove partners (persisted in the node's store)"}
	p.AddCommand(&cobra.Command{Use: "list", Short: "List partners", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			partners, err := listAll[node.PeerInfo](c, "/api/v1/partners", nil, "partners")
			if err != nil {
				return err
			}
			return printPeers(g, cmd.OutOrStdout(), partners)
		}})
	for _, verb := range []string{"add", "remove"} {
		use, short := verb+" PEER_ID", verb+" a partner"
		if verb == "add" {
			// A multiaddr ending in /p2p/<peer id> is kept and dialed: the
			// way to reach a partner that is not a Ferry node.
			use, short = "add PEER_ID|MULTIADDR", "add a partner (a multiaddr ending in /p2p/<peer id> keeps its address)"
		}
		p.AddCommand(&cobra.Command{Use: use, Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				var out map[string]any
				switch {
				case verb == "add" && strings.HasPrefix(args[0], "/"):
					err = c.call("POST", "/api/v1/partners", map[string]string{"addr": args[0]}, &out)
				case verb == "add":
					err = c.call("POST", "/api/v1/partners", map[string]string{"peer_id": args[0]}, &out)
				default:
					err = c.call("DELETE", "/api/v1/partners/"+url.PathEscape(args[0]), nil, &out)
				}
				if err != nil {
					return err
				}
				if g.json {
					return g.emit(cmd.OutOrStdout(), out, nil)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "partner %s: %s\n", verb, args[0])
				return nil
			}})
	}
	return p
}

// RequestTable prints request rows laid out as source 000 does.
func (g *globals) RequestTable(w *tabwriter.Writer, rows []review.Row) {
	fmt.Fprintln(w, "ID\tTABLE_ID\tTABLE_NAME\tAPPLICANT\tREVIEWER\tTYPE\tSTATUS\tDATA\tDESCRIPTION\tCREATED_AT\tSEQ\tCONFLICT")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t{sender: %s, receiver: %s}\t%s\t%d\t%s\n", r.ID, r.TableID, r.TableName,
			r.Applicant, r.Reviewer, r.Type, r.Status, compact(r.Data), r.Description.Sender, r.Description.Receiver, g.when(unix(r.CreatedAt)),
			r.Sequence, dash(r.Conflict))
	}
}

func compact(raw json.RawMessage) string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func requestsCmd(g *globals) *cobra.Command {
	r := &cobra.Command{Use: "requests", Short: "Read and decide review requests"}
	var status string
	list := &cobra.Command{Use: "list", Short: "List request rows", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if status != "" {
				q.Set("status", status)
			}
			rows, err := listAll[review.Row](c, "/api/v1/requests", q, "requests")
			if err != nil {
				return err
			}
			return g.emit(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) { g.RequestTable(w, rows) })
		}}
	list.Flags().StringVar(&status, "status", "", "only rows with this status: waiting, accepted, edited or rejected")
	show := &cobra.Command{Use: "show ID", Short: "Show one request: its row, the table row it changes now, the change field by field, and who a decision goes to",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := requestID(args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var out node.RequestDetail
			if err := c.call("GET", "/api/v1/requests/"+strconv.FormatUint(id, 10), nil, &out); err != nil {
				return err
			}
			return g.emit(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) { g.requestDetail(w, out) })
		}}
	r.AddCommand(list, show)
	for _, d := range []string{"accept", "reject", "edit"} {
		var note, data string
		var sets []string
		dc := &cobra.Command{Use: d + " ID", Short: d + " a waiting request (on the reviewer)", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := requestID(args[0])
				if err != nil {
					return err
				}
				body := review.DecideRequest{Note: note}
				if d == "edit" {
					if data == "" && len(sets) == 0 {
						return fmt.Errorf("edit needs --set FIELD=VALUE or --data JSON")
					}
					if data != "" {
						raw, err := jsonArg("--data", data)
						if err != nil {
							return err
						}
						body.Data = raw
					}
					if len(sets) > 0 {
						body.Set = map[string]string{}
						for _, s := range sets {
							k, v, ok := strings.Cut(s, "=")
							if !ok || k == "" {
								return fmt.Errorf("--set %q: want FIELD=VALUE", s)
							}
							body.Set[k] = v
						}
					}
				}
				c, err := g.client()
				if err != nil {
					return err
				}
				var out struct{ Request review.Row }
				if err := c.call("POST", "/api/v1/requests/"+strconv.FormatUint(id, 10)+"/"+d, body, &out); err != nil {
					return err
				}
				return g.emit(cmd.OutOrStdout(), out.Request, func(w *tabwriter.Writer) {
					g.RequestTable(w, []review.Row{out.Request})
					if a := g.approvals(out.Request); a != "" {
						fmt.Fprintf(w, "\napproved here; the request waits for review.approvals: %s\n", a)
					}
				})
			}}
		dc.Flags().StringVar(&note, "note", "", "description.receiver (default: added, updated, deleted, edited or rejected)")
		if d == "edit" {
			dc.Flags().StringArrayVar(&sets, "set", nil, "FIELD=VALUE change to the request's data (VALUE is JSON if it parses, else a string); repeatable")
			dc.Flags().StringVar(&data, "data", "", "the edited data as a JSON object, replacing the request's")
		}
		r.AddCommand(dc)
	}
	return r
}

func requestID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("request id %q is not a positive number", s)
	}
	return id, nil
}

// AckTable prints acknowledgement rows.
func (g *globals) AckTable(w *tabwriter.Writer, acks []node.AckRow) {
	fmt.Fprintln(w, "ID\tREQUEST_ID\tRECEIVER\tKIND\tACK\tATTEMPTS\tCREATED\tNEXT ATTEMPT\tREASON\tLAST ERROR")
	for _, a := range acks {
		req := "-"
		if a.RequestID != 0 {
			req = strconv.FormatUint(a.RequestID, 10)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", a.ID, req, a.Receiver, a.Kind, a.Ack, a.Attempts,
			g.when(a.CreatedAt), g.when(a.NextAttemptAt), dash(a.Reason), dash(errSummary(a.Error)))
	}
}

// errSummary shortens a delivery error for a table row (--json keeps it
// whole): libp2p's dial errors name the peer twice and list every address
// on lines of their own, which filled a screen with five rows during an
// outage; the row keeps what was tried and why it failed.
func errSummary(s string) string {
	first, rest, _ := strings.Cut(s, "\n")
	if what, _, ok := strings.Cut(first, ": failed to dial"); ok {
		why := ""
		for _, l := range strings.Split(rest, "\n") {
			if i := strings.LastIndex(l, ": "); i >= 0 && strings.TrimSpace(l[i+2:]) != "" {
				why = strings.TrimSpace(l[i+2:]) // the first address's reason
				break
			}
		}
		if why == "" {
			if i := strings.LastIndex(first, ": "); i >= 0 {
				why = first[i+2:]
			}
		}
		first = what + ": dial failed"
		if why != "" {
			first += ": " + why
		}
	}
	return oneLine(first, 100)
}

// oneLine keeps the first line of s, cut to max runes.
func oneLine(s string, max int) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}

func acksCmd(g *globals) *cobra.Command {
	a := &cobra.Command{Use: "acks", Short: "The acknowledgement ledger: one row per change owed to a receiver"}
	var q node.AckQuery
	var pending bool
	list := &cobra.Command{Use: "list", Short: "List acknowledgement rows, newest change first",
		Long: "List acknowledgement rows, newest change first (receivers of one change in their order).\n" +
			"A page holds --limit rows; the line after the table gives the --before value of the next page.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pending {
				if q.State != "" && q.State != "pending" {
					return fmt.Errorf("--pending and --state %s contradict each other", q.State)
				}
				q.State = "pending"
			}
			if err := oneOf("--state", q.State, node.AckStates); err != nil {
				return err
			}
			if err := oneOf("--kind", q.Kind, node.AckKinds); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			v := url.Values{}
			for k, x := range map[string]string{"receiver": q.Receiver, "state": q.State, "kind": q.Kind, "before": q.Before} {
				if x != "" {
					v.Set(k, x)
				}
			}
			if q.RequestID != 0 {
				v.Set("request", strconv.FormatUint(q.RequestID, 10))
			}
			if q.Limit != 0 {
				v.Set("limit", strconv.Itoa(q.Limit))
			}
			var out struct {
				Acks []node.AckRow `json:"acks"`
				Next string        `json:"next"`
			}
			if err := c.call("GET", "/api/v1/acks?"+v.Encode(), nil, &out); err != nil {
				return err
			}
			if g.json {
				return g.emit(cmd.OutOrStdout(), node.AckPage{Rows: out.Acks, Next: out.Next}, nil)
			}
			if err := g.emit(cmd.OutOrStdout(), nil, func(w *tabwriter.Writer) { g.AckTable(w, out.Acks) }); err != nil {
				return err
			}
			if out.Next != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "more: ferry acks list --before %s (with the same filters)\n", out.Next)
			}
			return nil
		}}
	f := list.Flags()
	f.Uint64Var(&q.RequestID, "request", 0, "only the rows of this request id")
	f.StringVar(&q.Receiver, "receiver", "", "only rows of this receiver (name or peer id)")
	f.StringVar(&q.State, "state", "", "only rows in this state: "+strings.Join(node.AckStates, ", "))
	f.StringVar(&q.Kind, "kind", "", "only rows of this kind: "+strings.Join(node.AckKinds, ", "))
	f.BoolVar(&pending, "pending", false, "only rows still waiting for their ack (--state pending)")
	f.IntVar(&q.Limit, "limit", 0, fmt.Sprintf("rows per page (default %d, at most %d)", node.DefaultAckLimit, node.MaxAckLimit))
	f.StringVar(&q.Before, "before", "", "the page after this cursor (printed under the previous page)")
	a.AddCommand(list)
	return a
}

func oneOf(flag, v string, set []string) error {
	if v == "" || slices.Contains(set, v) {
		return nil
	}
	return fmt.Errorf("%s %q: want one of %s", flag, v, strings.Join(set, ", "))
}

// RowsTable prints table rows: id first, then every field by name.
func RowsTable(w *tabwriter.Writer, rows []json.RawMessage) {
	var objs []map[string]any
	cols := map[string]bool{}
	for _, r := range rows {
		var m map[string]any
		if json.Unmarshal(r, &m) == nil {
			objs = append(objs, m)
			for k := range m {
				if k != "id" {
					cols[k] = true
				}
			}
		}
	}
	names := make([]string, 0, len(cols))
	for k := range cols {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprint(w, "ID")
	for _, k := range names {
		fmt.Fprint(w, "\t"+strings.ToUpper(k))
	}
	fmt.Fprintln(w)
	for _, m := range objs {
		fmt.Fprint(w, cell(m["id"]))
		for _, k := range names {
			fmt.Fprint(w, "\t"+cell(m[k]))
		}
		fmt.Fprintln(w)
	}
}

func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func rowsCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "rows TABLE", Short: "Show a shared table's rows", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rows, err := listAll[json.RawMessage](c, "/api/v1/tables/"+url.PathEscape(args[0])+"/rows", nil, "rows")
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				return fmt.Errorf("table %s has no rows here (not_found): a table exists once a decision or the seed writes a row", args[0])
			}
			return g.emit(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) { RowsTable(w, rows) })
		}}
}

func resourcesCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "resources [DATA_TYPE]", Short: "List resources held here, own and received", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if len(args) == 1 {
				q.Set("data_type", args[0])
			}
			resources, err := listAll[node.ResourceRow](c, "/api/v1/resources", q, "resources")
			if err != nil {
				return err
			}
			return g.emit(cmd.OutOrStdout(), resources, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "DATA_TYPE\tID\tCREATOR\tOWN\tVERSION\tDELETED\tRESOURCE")
				for _, r := range resources {
					fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%d\t%v\t%s\n", r.DataType, r.ID, r.Creator, r.Own, r.OriginVersion, r.Deleted, compact(r.Resource))
				}
			})
		}}
}

// jsonArg checks a JSON object argument and names it and the problem.
func jsonArg(name, s string) (json.RawMessage, error) {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			err = fmt.Errorf("%s at byte %d", se, se.Offset)
		}
		return nil, fmt.Errorf("%s %q is not valid JSON (%v); quote it for the shell, e.g. '{\"name\": \"x\"}'", name, oneLine(s, 40), err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("%s %q must be a JSON object, e.g. '{\"name\": \"x\"}'", name, oneLine(s, 40))
	}
	return json.RawMessage(s), nil
}

func publishCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "publish ACTION DATA_TYPE JSON", Short: "Propagate an action as an app would on ferry.propagate",
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			payload, err := jsonArg("the payload", args[2])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var out map[string]any
			if err := c.call("POST", "/api/v1/propagate", map[string]any{"action": args[0], "data_type": args[1], "payload": payload}, &out); err != nil {
				return err
			}
			delete(out, "ok")
			return g.emit(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
				keys := make([]string, 0, len(out))
				for k := range out {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					fmt.Fprintf(w, "%s\t%s\n", k, cell(out[k]))
				}
			})
		}}
}

func submitCmd(g *globals) *cobra.Command {
	var desc string
	c := &cobra.Command{Use: "submit TYPE TABLE ID JSON", Short: "Submit a change to a shared table for review (type insert, update or delete)",
		Args: cobra.ExactArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[2], 10, 64)
			if err != nil || id == 0 {
				return fmt.Errorf("ID %q is not a positive number", args[2])
			}
			data, err := jsonArg("the data", args[3])
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			var out struct{ Request review.Row }
			body := review.SubmitRequest{Type: args[0], TableName: args[1], TableID: id, Data: data, Description: desc}
			if err := cl.call("POST", "/api/v1/review/submit", body, &out); err != nil {
				return err
			}
			return g.emit(cmd.OutOrStdout(), out.Request, func(w *tabwriter.Writer) { g.RequestTable(w, []review.Row{out.Request}) })
		}}
	c.Flags().StringVar(&desc, "description", "", "description.sender: why this change")
	return c
}

func searchCmd(g *globals) *cobra.Command {
	var scope string
	var wait time.Duration
	c := &cobra.Command{Use: "search DATA_TYPE TEXT", Short: "Search peers (data type peer) or resources across the network",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			var out struct {
				QueryID string            `json:"query_id"`
				Results []json.RawMessage `json:"results"`
			}
			body := map[string]any{"data_type": args[0], "search": args[1], "type": scope, "wait_ms": wait.Milliseconds()}
			if err := cl.call("POST", "/api/v1/search", body, &out); err != nil {
				return err
			}
			return g.emit(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "query\t%s\n", out.QueryID)
				for _, r := range out.Results {
					fmt.Fprintf(w, "result\t%s\n", compact(r))
				}
			})
		}}
	c.Flags().StringVar(&scope, "scope", "all", "who is asked: all (gossipsub), known or partner")
	c.Flags().DurationVar(&wait, "wait", 2*time.Second, "how long to collect answers")
	return c
}
