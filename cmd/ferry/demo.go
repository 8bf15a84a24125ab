package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// demoTimeout bounds each step of the demo.
const demoTimeout = 30 * time.Second

func demoCmd(g *globals) *cobra.Command {
	var keep bool
	var dir string
	c := &cobra.Command{Use: "demo", Short: "Play source 000 on four local nodes A, B, C (the reviewer) and D", Args: cobra.NoArgs,
		Long: "Starts nodes A, B, C (the reviewer) and D on loopback with fresh homes, then plays source 000:\n" +
			"A submits insert tb1 row 3 {\"unique_num\": 40123, \"name\": \"name3\"}; C's operator accepts; every node\n" +
			"ends with the same request row and the same tb1. Prints each node's tables and exits 0.",
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd, g, dir, keep) }}
	c.Flags().BoolVar(&keep, "keep", false, "leave the nodes running and print how to reach each one")
	c.Flags().StringVar(&dir, "dir", "", "where the four homes go (default: a new temporary directory)")
	return c
}

type demoNode struct {
	name string
	home node.Home
	n    *node.Node
	api  *client
	nc   *nats.Conn
}

func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func runDemo(cmd *cobra.Command, g *globals, dir string, keep bool) (err error) {
	out := cmd.OutOrStdout()
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ferry-demo-"); err != nil {
			return err
		}
		if !keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	node.RouteLibp2pLogs(log.Handler())
	names := []string{"A", "B", "C", "D"}
	nodes := make([]*demoNode, len(names))
	ids := make([]string, len(names))
	for i, name := range names {
		h := node.Home{Dir: filepath.Join(dir, name)}
		id, err := h.Init(node.InitOptions{Name: name, Network: "ferry-demo"})
		if err != nil {
			return err
		}
		nodes[i] = &demoNode{name: name, home: h}
		ids[i] = id.String()
	}
	defer func() {
		if keep && err == nil {
			return
		}
		for _, d := range nodes {
			if d.nc != nil {
				d.nc.Close()
			}
			if d.n != nil {
				_ = d.n.Close()
			}
		}
	}()
	var bootstrap string
	for i, d := range nodes {
		port, err := freeTCPPort()
		if err != nil {
			return err
		}
		c := node.Default()
		c.Name, c.Network = d.name, "ferry-demo"
		c.Listen = []string{"/ip4/127.0.0.1/tcp/" + strconv.Itoa(port)}
		c.NATS.Listen = "127.0.0.1:0"
		c.Admin.Listen = "127.0.0.1:0"
		c.Reviewer = ids[2]
		if i == 0 {
			bootstrap = c.Listen[0] + "/p2p/" + ids[0]
		} else {
			c.Bootstrap = []string{bootstrap}
		}
		if err := c.Save(d.home.ConfigPath()); err != nil {
			return err
		}
		n, err := node.New(c, d.home, node.Options{Logger: log, DiscoveryPeriod: 2 * time.Second})
		if err != nil {
			return err
		}
		d.n = n
		// Every node starts from the same tb1 (the source's rows 1 and 2).
		err = n.Review().Seed(cmd.Context(), "tb1", map[uint64]json.RawMessage{
			1: json.RawMessage(`{"unique_num": 20123, "name": "name1"}`),
			2: json.RawMessage(`{"unique_num": 30213, "name": "name2"}`),
		})
		if err != nil {
			return err
		}
		if err := n.Start(); err != nil {
			return err
		}
		token, err := d.home.Token()
		if err != nil {
			return err
		}
		d.api = &client{base: "http://" + n.AdminAddr(), token: token, http: &http.Client{Timeout: demoTimeout}}
		if d.nc, err = nats.Connect(n.NATSURL()); err != nil {
			return err
		}
	}
	a, cNode := nodes[0], nodes[2]
	fmt.Fprintf(out, "Four nodes on loopback: A, B, C (reviewer), D. Homes in %s\n\n", dir)
	if err := waitUntil("every node knows every other as a member", func() bool {
		for _, d := range nodes {
			if len(d.n.Members()) < len(nodes)-1 {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}

	fmt.Fprintln(out, "A submits: insert tb1 row 3 {unique_num: 40123, name: name3}, description \"adding\" (on A's NATS, ferry.review.submit)")
	msg, err := a.nc.Request("ferry.review.submit",
		[]byte(`{"type":"insert","table_name":"tb1","table_id":3,"data":{"unique_num":40123,"name":"name3"},"description":"adding"}`), demoTimeout)
	if err != nil {
		return fmt.Errorf("submit on A: %w", err)
	}
	var sub struct {
		OK      bool
		Error   *apiError
		Request review.Row
	}
	if err := json.Unmarshal(msg.Data, &sub); err != nil || !sub.OK {
		return fmt.Errorf("submit on A refused: %s", msg.Data)
	}
	origin := sub.Request.Origin
	var atC review.Row
	if err := waitUntil("C holds A's request and A's ack turned sended", func() bool {
		r, err := cNode.n.Review().RequestByOrigin(origin)
		if err != nil {
			return false
		}
		atC = r
		acks, err := a.n.Acks(node.AckQuery{RequestID: sub.Request.ID, State: node.AckPending})
		return err == nil && len(acks.Rows) == 0
	}); err != nil {
		return err
	}
	fmt.Fprintln(out)
	if err := printNode(out, g, a, []string{"request", "acknowledgement"}); err != nil {
		return err
	}
	if err := printNode(out, g, cNode, []string{"request"}); err != nil {
		return err
	}

	fmt.Fprintf(out, "C's operator accepts request %d (%s requests accept %d on C)\n\n", atC.ID, selfCommand(), atC.ID)
	var dec struct{ Request review.Row }
	if err := cNode.api.call("POST", "/api/v1/requests/"+strconv.FormatUint(atC.ID, 10)+"/accept", map[string]string{}, &dec); err != nil {
		return fmt.Errorf("accept on C: %w", err)
	}
	if err := waitUntil("every node applied the decision and C's acks turned sended", func() bool {
		for _, d := range nodes {
			r, err := d.n.Review().RequestByOrigin(origin)
			if err != nil || r.Status != "accepted" {
				return false
			}
		}
		acks, err := cNode.n.Acks(node.AckQuery{RequestID: atC.ID, State: node.AckPending})
		return err == nil && len(acks.Rows) == 0
	}); err != nil {
		return err
	}
	for _, d := range nodes {
		if err := printNode(out, g, d, []string{"request", "acknowledgement", "tb1"}); err != nil {
			return err
		}
	}
	if err := demoConsistent(nodes, origin); err != nil {
		return err
	}
	fmt.Fprintln(out, "Every node holds the same request row (accepted) and the same tb1.")
	if !keep {
		return nil
	}
	// Leave work for the newcomer: three requests wait for C's operator.
	waiting := []struct {
		d    *demoNode
		body string
	}{
		{nodes[1], `{"type":"update","table_name":"tb1","table_id":2,"data":{"name":"name2-renamed"},"description":"B renames row 2"}`},
		{nodes[3], `{"type":"insert","table_name":"tb1","table_id":4,"data":{"unique_num":50123,"name":"name4"},"description":"D adds row 4"}`},
		{nodes[0], `{"type":"delete","table_name":"tb1","table_id":1,"data":{},"description":"A removes row 1"}`},
	}
	for _, w := range waiting {
		msg, err := w.d.nc.Request("ferry.review.submit", []byte(w.body), demoTimeout)
		if err != nil {
			return fmt.Errorf("submit on %s: %w", w.d.name, err)
		}
		if err := json.Unmarshal(msg.Data, &sub); err != nil || !sub.OK {
			return fmt.Errorf("submit on %s refused: %s", w.d.name, msg.Data)
		}
	}
	if err := waitUntil("C holds the three new requests", func() bool {
		rs, err := cNode.n.Review().Requests("waiting")
		return err == nil && len(rs) == len(waiting)
	}); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nThree more requests wait for C's operator (B updates row 2, D inserts row 4, A deletes row 1):")
	self := selfCommand()
	fmt.Fprintf(out, "  %s --home %s requests list --status waiting\n", self, cNode.home.Dir)
	fmt.Fprintf(out, "  %s --home %s requests show <id>      (the current row and the diff)\n", self, cNode.home.Dir)
	fmt.Fprintf(out, "  %s --home %s requests accept <id>    (or edit, reject; or decide in the console below)\n", self, cNode.home.Dir)
	fmt.Fprintf(out, "  %s --home %s watch                   (what A sends, receives and applies, live)\n", self, a.home.Dir)
	fmt.Fprintln(out, "\nThe nodes keep running (Ctrl-C stops them):")
	for _, d := range nodes {
		fmt.Fprintf(out, "  %s: nats %s  admin http://%s  (%s --home %s status)\n", d.name, d.n.NATSURL(), d.n.AdminAddr(), self, d.home.Dir)
	}
	fmt.Fprintf(out, "Review console of C (the reviewer): http://%s/#token=%s\n", cNode.n.AdminAddr(), cNode.api.token)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	for _, d := range nodes {
		d.nc.Close()
		_ = d.n.Close()
	}
	return nil
}

func waitUntil(what string, cond func() bool) error {
	deadline := time.Now().Add(demoTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// printNode prints a node's tables the way source 000 lays them out.
func printNode(out io.Writer, g *globals, d *demoNode, tables []string) error {
	for _, t := range tables {
		fmt.Fprintf(out, "%s:%s\n", t, d.name)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		switch t {
		case "request":
			var res struct{ Requests []review.Row }
			if err := d.api.call("GET", "/api/v1/requests", nil, &res); err != nil {
				return err
			}
			fmt.Fprintln(tw, "id\ttable_id\ttable_name\tapplicant\treviewer\ttype\tstatus\tdata\tdescription\tcreated_at")
			for _, r := range res.Requests {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t{sender: %s, receiver: %s}\t%d\n", r.ID, r.TableID, r.TableName,
					r.Applicant, r.Reviewer, r.Type, r.Status, compact(r.Data), r.Description.Sender, r.Description.Receiver, r.CreatedAt)
			}
		case "acknowledgement":
			var res struct{ Acks []node.AckRow }
			if err := d.api.call("GET", "/api/v1/acks", nil, &res); err != nil {
				return err
			}
			fmt.Fprintln(tw, "id\trequest_id\treceiver\tack")
			for _, a := range res.Acks {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", a.ID, a.RequestID, a.Receiver, a.Ack)
			}
			if len(res.Acks) == 0 {
				fmt.Fprintln(tw, "(none)")
			}
		default:
			var res struct{ Rows []json.RawMessage }
			if err := d.api.call("GET", "/api/v1/tables/"+t+"/rows", nil, &res); err != nil {
				return err
			}
			demoRows(tw, res.Rows)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(out)
	}
	return nil
}

// demoRows prints tb1 with the source's columns: id, unique_num, name.
func demoRows(w io.Writer, rows []json.RawMessage) {
	fmt.Fprintln(w, "id\tunique_num\tname")
	for _, r := range rows {
		var m map[string]any
		if json.Unmarshal(r, &m) == nil {
			fmt.Fprintf(w, "%s\t%s\t%s\n", cell(m["id"]), cell(m["unique_num"]), cell(m["name"]))
		}
	}
}

// demoConsistent checks that every node ended in the same state.
func demoConsistent(nodes []*demoNode, origin string) error {
	var first review.Row
	var firstRows []json.RawMessage
	for i, d := range nodes {
		r, err := d.n.Review().RequestByOrigin(origin)
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		rows, err := d.n.Rows("tb1")
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		r.ID = 0 // each node numbers its own rows
		if i == 0 {
			first, firstRows = r, rows
			continue
		}
		if !reflect.DeepEqual(r, first) {
			return fmt.Errorf("%s's request row differs from A's: %+v vs %+v", d.name, r, first)
		}
		if !reflect.DeepEqual(rows, firstRows) {
			return fmt.Errorf("%s's tb1 differs from A's", d.name)
		}
	}
	if first.Status != "accepted" || len(firstRows) != 3 {
		return errors.New("the request was not accepted everywhere")
	}
	return nil
}
