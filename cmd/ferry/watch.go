package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
)

var eventTypes = []string{node.EventCommitted, node.EventAcked, node.EventRejected, node.EventApplied, node.EventSubmitted,
	node.EventDecided, node.EventPublished}

func watchCmd(g *globals) *cobra.Command {
	var types []string
	var noRecent bool
	c := &cobra.Command{Use: "watch", Short: "Live tail of what the node commits and sends, what receivers acknowledge, what it applies, decides and publishes",
		Long: "Live tail of the node's activity, one line per event, until Ctrl-C:\n" +
			"  committed  a change of this node is on disk and queued for its receivers (-> who)\n" +
			"  acked      a receiver acknowledged a change of this node (rejected: refused it for good)\n" +
			"  applied    a change from a peer is applied here\n" +
			"  submitted  a review request of this node's apps is on disk, on its way to the reviewer\n" +
			"  decided    the operator here decided a request (-> who receives the decision)\n" +
			"  published  an event went out on this node's NATS\n" +
			"The last 256 events come first (--no-recent skips them). --json prints one JSON object per line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, t := range types {
				if err := oneOf("--type", t, eventTypes); err != nil {
					return err
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return g.watch(ctx, c, cmd.OutOrStdout(), types, !noRecent)
		}}
	c.Flags().StringSliceVar(&types, "type", nil, "only these event types (repeatable, or comma-separated): "+strings.Join(eventTypes, ", "))
	c.Flags().BoolVar(&noRecent, "no-recent", false, "only events from now on")
	return c
}

// watch prints the node's events until ctx ends (nil) or the node goes away.
func (g *globals) watch(ctx context.Context, c *client, out io.Writer, types []string, recent bool) error {
	q := url.Values{}
	if !recent {
		q.Set("recent", "0")
	}
	stream := *c
	stream.http = &http.Client{} // no overall timeout: the stream lasts
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := stream.requestCtx(ctx, "GET", "/api/v1/events?"+q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("admin API answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			if event == "dropped" {
				fmt.Fprintf(out, "(%s events were dropped: this watcher was too slow)\n", strings.Trim(strings.TrimPrefix(data, `{"dropped":`), "}"))
				continue
			}
			var e node.Event
			if err := json.Unmarshal([]byte(data), &e); err != nil {
				continue
			}
			if len(types) > 0 && !slices.Contains(types, e.Type) {
				continue
			}
			if g.json {
				fmt.Fprintln(out, data)
				continue
			}
			fmt.Fprintln(out, g.eventLine(e))
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("the node's event stream broke: %w", err)
	}
	return errors.New("the node stopped (its event stream ended)")
}

// eventLine is one event for a person.
func (g *globals) eventLine(e node.Event) string {
	ts := e.Time.Local().Format("15:04:05.000")
	if g.absolute {
		ts = e.Time.UTC().Format(time.RFC3339Nano)
	}
	var what string
	switch e.Type {
	case node.EventCommitted:
		what = fmt.Sprintf("%s %s, version %d", e.Kind, e.Detail, e.Version)
		what += arrow(e.To)
	case node.EventAcked, node.EventRejected:
		what = fmt.Sprintf("%s version %d by %s", e.Kind, e.Version, e.Peer)
		if e.RequestID != 0 {
			what += fmt.Sprintf(" (request %d)", e.RequestID)
		}
		if e.Detail != "" {
			what += ": " + e.Detail
		}
	case node.EventApplied:
		what = fmt.Sprintf("%s %s/%d from %s", e.Kind, short(e.Origin), e.OriginVersion, e.Peer)
		if e.RequestID != 0 {
			what = fmt.Sprintf("%s (request %d) %s/%d from %s", e.Kind, e.RequestID, short(e.Origin), e.OriginVersion, e.Peer)
		}
		if e.Detail != "" {
			what += ": " + e.Detail
		}
	case node.EventSubmitted:
		what = fmt.Sprintf("request %d: %s", e.RequestID, e.Detail)
	case node.EventDecided:
		what = fmt.Sprintf("request %d: %s", e.RequestID, e.Detail) + arrow(e.To)
	case node.EventPublished:
		what = e.Subject
	default:
		what = e.Detail
	}
	return fmt.Sprintf("%s  %-9s  %s", ts, e.Type, what)
}

func arrow(to []string) string {
	if len(to) == 0 {
		return " (no receivers)"
	}
	return " -> " + strings.Join(to, ", ")
}

// short is the tail of a peer id, as the peer book names unnamed peers.
func short(id string) string {
	if len(id) > 12 {
		return "…" + id[len(id)-8:]
	}
	return id
}

func traceCmd(g *globals) *cobra.Command {
	puml := false
	c := &cobra.Command{Use: "trace REF", Short: "Where one change is on each node: a table, or a PlantUML sequence diagram with the real times",
		Long: "Follows one change across the network: committed at its origin, sent to and applied by each\n" +
			"receiver, acknowledged, published to apps. REF names the change:\n" +
			"  ORIGIN/VERSION   a peer id or node name and the origin's version (the version a publish answered)\n" +
			"  DATA_TYPE/ID     a resource held here (vm/vm1): its last change, on its origin the app's\n" +
			"  REQUEST_ID       a review request held here: the change that carried it\n" +
			"Prints a table; --puml prints PlantUML (render it with `plantuml -tsvg`); --json prints the facts.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var out struct {
				Trace    node.TraceReport `json:"trace"`
				PlantUML string           `json:"plantuml"`
			}
			if err := c.call("GET", "/api/v1/trace?ref="+url.QueryEscape(args[0]), nil, &out); err != nil {
				return err
			}
			switch {
			case g.json:
				return g.emit(cmd.OutOrStdout(), out.Trace, nil)
			case puml:
				_, err = io.WriteString(cmd.OutOrStdout(), out.PlantUML)
				return err
			}
			return g.emit(cmd.OutOrStdout(), out.Trace, func(w *tabwriter.Writer) { g.traceTable(w, out.Trace) })
		}}
	c.Flags().BoolVar(&puml, "puml", false, "print a PlantUML sequence diagram instead of the table")
	return c
}

// traceTable prints a trace: a line for the change, a row per node.
func (g *globals) traceTable(w *tabwriter.Writer, t node.TraceReport) {
	what := strings.TrimSpace(t.Kind + " " + t.DataType)
	if what == "" {
		what = "change"
	}
	fmt.Fprintf(w, "%s %s/%d, committed %s\n\n", what, t.OriginName, t.Version, g.when(t.CommittedAt))
	fmt.Fprintln(w, "NODE\tROLE\tHOLDS\tLOCAL VERSION\tAPPLIED\tPUBLISHED\tACK\tATTEMPTS\tNOTE")
	for _, x := range t.Nodes {
		holds, local, applied := "no", "-", "-"
		if x.Held {
			holds = "yes"
		}
		if !x.Asked {
			holds = "?" // not asked, or it could not be
		}
		if x.LocalVersion != 0 {
			local = strconv.FormatUint(x.LocalVersion, 10)
		}
		if !x.AppliedAt.IsZero() {
			applied = g.when(x.AppliedAt)
		}
		note := x.Error
		if x.AskError != "" {
			note = "not asked: " + x.AskError
		}
		if !x.NextAttemptAt.IsZero() {
			note = strings.TrimSpace(note + " next try " + g.when(x.NextAttemptAt))
		}
		attempts := "-"
		if x.Attempts > 0 {
			attempts = strconv.FormatUint(uint64(x.Attempts), 10)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Name, x.Role, holds, local, applied, dash(x.Published), dash(x.Ack), attempts, oneLine(note, 100))
	}
}
