// Package consoletest drives the node's web console in real headless
// Chromium (Debian's chromium, installed by scripts/deps.sh): a refused
// token, sign in, accept, edit through the form, reject, result messages
// that stay and say who applied a decision, decided requests with their
// time and "applied by", waiting requests' approvals (review.approvals,
// rendered from rows that carry them), rates per peer, the cross-links peer -> rows ->
// trace, errors grouped per receiver, zoomable flows, and the disconnected
// state once the node stops; on a reviewer of a review group, the group in
// the header (group_test.go). Screenshots go to
// artifacts/console/ at the repository root (git-ignored; CI keeps them).
package consoletest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ferrynet/ferry/internal/testnet"
)

const (
	nA, nB, nC = 0, 1, 2 // C is the reviewer
	step       = 30 * time.Second
)

// chromium finds Debian's Chromium; outside CI its absence skips the test
// with a message, in CI it fails.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("Chromium is missing: scripts/deps.sh installs Debian's chromium (CI runs it first)")
	}
	t.Skip("Chromium is missing: run scripts/deps.sh (apt-get install chromium) to run the console's browser test")
	return ""
}

func artifacts(t *testing.T) string {
	dir := filepath.Join("..", "..", "artifacts", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is one headless Chromium with the helpers the tests drive it by.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string // screenshots
}

// openBrowser starts Chromium for at most limit; it stops at the test's
// cleanup.
func openBrowser(t *testing.T, exe string, limit time.Duration) *browser {
	opts := []chromedp.ExecAllocatorOption{chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(800, 1000)}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancel)
	ctx, cancelT := context.WithTimeout(ctx, limit)
	t.Cleanup(cancelT)
	return &browser{t: t, ctx: ctx, dir: artifacts(t)}
}

func (b *browser) shot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	sctx, c := context.WithTimeout(b.ctx, step)
	defer c()
	if err := chromedp.Do(sctx, actions...); err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
}

func (b *browser) eval(what, expr string) any {
	b.t.Helper()
	sctx, c := context.WithTimeout(b.ctx, step)
	defer c()
	v, err := chromedp.Run(sctx, chromedp.Evaluate[any](expr))
	if err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	s, _ := b.eval("read "+sel, fmt.Sprintf(`(document.querySelector(%q) || {textContent: ""}).textContent`, sel)).(string)
	return s
}

// poll waits until the expression is true.
func (b *browser) poll(what, expr string) {
	b.t.Helper()
	sctx, c := context.WithTimeout(b.ctx, step)
	defer c()
	if _, err := chromedp.Run(sctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v (page says: %s)", what, err, b.text("body"))
	}
}

// waitText waits until the element's text contains want.
func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	b.poll(fmt.Sprintf("wait for %q in %s", want, sel),
		fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.includes(%q); })()`, sel, want))
}

// press clicks a button in one step in the page: the refresh every 5 s
// redraws the cards, so a node found first may be gone when clicked.
func (b *browser) press(sel string) {
	b.t.Helper()
	b.poll("press "+sel, fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e || e.disabled) return false; e.click(); return true; })()`, sel))
}

// fits fails when the page is wider than the 800 px window.
func (b *browser) fits(view string) {
	b.t.Helper()
	if w, _ := b.eval("page width", `document.documentElement.scrollWidth`).(float64); w > 800 {
		b.shot("failed")
		b.t.Fatalf("the %s view is %.0f px wide in an 800 px window", view, w)
	}
}

func (b *browser) visible(sel string) bool {
	b.t.Helper()
	v, _ := b.eval("visible "+sel, fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.getClientRects().length > 0; })()`, sel)).(bool)
	return v
}

func submit(t *testing.T, net *testnet.Net, i int, body string) uint64 {
	t.Helper()
	var out struct {
		OK      bool
		Request struct{ Origin string }
		Error   any
	}
	testnet.Request(t, net.NATS(i), "ferry.review.submit", body, &out)
	if !out.OK {
		t.Fatalf("submit %s: %v", body, out.Error)
	}
	var id uint64
	testnet.WaitFor(t, step, "the reviewer holds "+out.Request.Origin, func() bool {
		r, err := net.Node(nC).Review().RequestByOrigin(out.Request.Origin)
		id = r.ID
		return err == nil
	})
	return id
}

func TestConsoleInBrowser(t *testing.T) {
	exe := chromium(t)
	// Every node a partner of every other: C's resources go to A and B,
	// which gives the rates something to count.
	net := testnet.Start(t, testnet.Options{N: 3, Reviewer: testnet.At(nC), Mesh: true})
	net.WaitMembers(30 * time.Second)
	token, err := net.Homes[nC].Token()
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + net.Node(nC).AdminAddr()
	accept := submit(t, net, nA, `{"type":"insert","table_name":"tb","table_id":1,"data":{"name":"one","n":1},"description":"to accept"}`)
	edit := submit(t, net, nB, `{"type":"insert","table_name":"tb","table_id":2,"data":{"name":"two","n":2},"description":"to edit"}`)
	reject := submit(t, net, nA, `{"type":"insert","table_name":"tb","table_id":3,"data":{"name":"three"},"description":"to reject"}`)

	b := openBrowser(t, exe, 4*time.Minute)
	ctx, dir := b.ctx, b.dir
	shot, run, eval, text, poll, waitText, press, fits, visible := b.shot, b.run, b.eval, b.text, b.poll, b.waitText, b.press, b.fits, b.visible
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	// Signing in: the page asks for the token, then shows the queue. (The
	// first call starts the browser: no step timeout on it.)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(css("#token"))); err != nil {
		t.Fatalf("open the console: %v", err)
	}
	shot("01-sign-in")
	// A refused token: the sign-in form again, no tabs, and the header does
	// not claim a connection.
	run("a wrong token", chromedp.SendKeys(css("#token"), "not-the-token"), chromedp.Click(css("#signin")))
	waitText("#messages", "The token was refused")
	run("the form again", chromedp.WaitVisible(css("#token")))
	if visible("#tabs") || visible("#view-queue") {
		shot("failed")
		t.Fatal("after a refused token the tabs or the queue are visible")
	}
	if c := text("#conn"); strings.Contains(c, "connected") {
		shot("failed")
		t.Fatalf("after a refused token the header says %q", c)
	}
	shot("01b-refused")
	eval("clear the token", `document.querySelector("#token").value = ""`)
	run("sign in", chromedp.SendKeys(css("#token"), token), chromedp.Click(css("#signin")),
		chromedp.WaitVisible(css(fmt.Sprintf("#accept-%d", accept))))
	waitText("#who", "reviewer")
	waitText("#conn", "connected")
	// At 800 px every decide button is inside the window.
	right, _ := eval("measure", `Math.max(...[...document.querySelectorAll(".decide button")].map(b => b.getBoundingClientRect().right))`).(float64)
	if right > 800 || right == 0 {
		t.Fatalf("decide buttons end at %.0f px in an 800 px window", right)
	}
	if d := text(fmt.Sprintf("#req-%d", edit)); !strings.Contains(d, "after accepting") || !strings.Contains(d, `"two"`) {
		t.Fatalf("request %d shows no diff: %s", edit, d)
	}
	fits("queue")
	shot("02-queue")

	// Accept: the confirmation names who receives the decision.
	press(fmt.Sprintf("#accept-%d", accept))
	run("accept", chromedp.WaitVisible(css("#confirm")))
	if c := text("#confirm-text"); !strings.Contains(c, "A") || !strings.Contains(c, "B") {
		t.Fatalf("the accept confirmation does not name the members: %q", c)
	}
	shot("03-accept-confirm")
	run("confirm accept", chromedp.Click(css("#confirm-ok")))
	waitText("#messages", fmt.Sprintf("Request %d accepted", accept))
	// The message says how many members applied it, live: C at once, then A and B.
	waitText("#messages", "applied by 3/3 members")
	if visible(".msg.token-refused") {
		t.Fatal("the refused token's message stays after signing in")
	}

	// Edit through the form: change one field, add one.
	press(fmt.Sprintf("#edit-%d", edit))
	run("edit", chromedp.WaitVisible(css("#edit-fields")))
	eval("change a field", `(() => {
		for (const tr of document.querySelectorAll("#edit-fields tbody tr")) {
			if (tr.querySelector(".fname").value === "name") { const v = tr.querySelector(".fval"); v.value = "two-edited"; }
		}
		return true })()`)
	run("add a field", chromedp.Click(css("#add-field")))
	// A bad field name is refused in the form, nothing is sent.
	eval("bad field", `(() => { const rows = document.querySelectorAll("#edit-fields tbody tr"); const tr = rows[rows.length-1];
		tr.querySelector(".fname").value = "id"; tr.querySelector(".fval").value = "9"; return true })()`)
	run("save the bad field", chromedp.Click(css("#confirm-ok")))
	waitText("#confirm-error", "cannot be edited")
	eval("good field", `(() => { const rows = document.querySelectorAll("#edit-fields tbody tr"); const tr = rows[rows.length-1];
		tr.querySelector(".fname").value = "color"; tr.querySelector(".fval").value = "blue"; return true })()`)
	shot("04-edit-form")
	run("save edit", chromedp.Click(css("#confirm-ok")))
	waitText("#messages", fmt.Sprintf("Request %d edited", edit))
	testnet.WaitFor(t, step, "B holds the edited row 2", func() bool {
		rows, err := net.Node(nB).Rows("tb")
		if err != nil {
			return false
		}
		for _, r := range rows {
			var m map[string]any
			if json.Unmarshal(r, &m) == nil && m["id"] == float64(2) {
				return m["name"] == "two-edited" && m["color"] == "blue" && m["n"] == float64(2)
			}
		}
		return false
	})

	// Reject with a note: the rejection goes to the applicant only.
	press(fmt.Sprintf("#reject-%d", reject))
	run("reject", chromedp.WaitVisible(css("#confirm")))
	if c := text("#confirm-text"); !strings.Contains(c, "applicant only: A") {
		t.Fatalf("the reject confirmation: %q", c)
	}
	run("note", chromedp.SendKeys(css("#note"), "not needed"), chromedp.Click(css("#confirm-ok")))
	waitText("#messages", fmt.Sprintf("Request %d rejected", reject))

	// The messages stay across refreshes until dismissed.
	before := text("#updated")
	poll("a refresh", fmt.Sprintf(`!!document.querySelector("#updated") && document.querySelector("#updated").textContent !== %q`, before))
	msgs := text("#messages")
	for _, want := range []string{fmt.Sprintf("Request %d accepted", accept), fmt.Sprintf("Request %d edited", edit), fmt.Sprintf("Request %d rejected", reject)} {
		if !strings.Contains(msgs, want) {
			t.Fatalf("after a refresh the messages lost %q: %s", want, msgs)
		}
	}
	waitText("#requests", "No request is waiting")
	if e := text("#empty-queue"); strings.Contains(e, "`") || !strings.Contains(e, "ferry submit") {
		t.Fatalf("the empty queue says %q", e)
	}

	// Decided requests: when, who applied them, and the note as written.
	eval("show all", `(() => { const s = document.querySelector("#status"); s.value = ""; s.dispatchEvent(new Event("change")); return true })()`)
	waitText(fmt.Sprintf("#req-%d", accept), "applied by 3/3 members")
	waitText(fmt.Sprintf("#req-%d", edit), "applied by 3/3 members")
	waitText(fmt.Sprintf("#req-%d", reject), "received by the applicant A (1/1)")
	for _, id := range []uint64{accept, edit, reject} {
		if c := text(fmt.Sprintf("#req-%d .decided-at", id)); !strings.Contains(c, "decided ") || strings.Contains(c, "not recorded") {
			t.Fatalf("request %d shows no decision time: %q", id, c)
		}
	}
	if c := text(fmt.Sprintf("#req-%d", reject)); !strings.Contains(c, "C wrote to the applicant:not needed") {
		t.Fatalf("the rejection's note: %q", c)
	}
	if c := text(fmt.Sprintf("#req-%d", accept)); strings.Contains(c, "reviewer:") || strings.Contains(c, "“added”") || strings.Contains(c, "wrote") {
		t.Fatalf("the accepted request shows the default note as if written: %q", c)
	}
	shot("05-decided")

	// Approvals: a lone reviewer needs one (TestConsoleReviewGroupInBrowser
	// has a real group with a request waiting with one of two approvals), so
	// here the page's own requestCard renders rows that carry approvals as
	// the admin API gives them, for the cases that one does not reach: who
	// approved and what is still needed, "approved by you" instead of the
	// accept button on the node that approved, the same for the applicant's
	// own node, and the edit the approvals are of.
	var ap struct {
		Mine, MineSays, Other, OtherEdited, None, Own, Title string
		MineBtn, MineReject, OtherBtn, NoneBtn, OwnBtn       bool
	}
	raw, _ := eval("render approvals", fmt.Sprintf(`(() => {
		const st = state.status, at = Math.floor(Date.now() / 1000) - 5;
		const base = {type: "insert", table_name: "tb", table_id: 77, status: "waiting", data: {n: 1}, description: {sender: "two needed", receiver: ""},
			created_at: at, applicant: "A", applicant_id: %q, approvals_required: 2, sequence: 0};
		const card = (x) => requestCard(Object.assign({}, base, x), st);
		const mine = card({id: 9001, approvals: [{reviewer: st.name, reviewer_id: st.peer_id, at}]});
		const other = card({id: 9002, approvals: [{reviewer: "S", reviewer_id: "12D3KooWOther", at}], edited_data: {n: 2}});
		const none = card({id: 9003}), own = card({id: 9004, applicant_id: st.peer_id});
		document.querySelector("#requests").before(el("div", {id: "approvals-demo"}, mine, other, none, own));
		const q = (c, s) => c.querySelector(s), txt = (c, s) => (q(c, s) || {textContent: ""}).textContent;
		const dialog = (b) => { b.click(); const d = document.querySelector("#confirm");
			const s = document.querySelector("#confirm-title").textContent + " " + document.querySelector("#confirm-text").textContent; d.close("cancel"); return s; };
		const title = dialog(q(none, "#accept-9003")) + " | " + dialog(q(other, "#accept-9002"));
		return JSON.stringify({Mine: txt(mine, ".approvals"), MineBtn: !!q(mine, "#accept-9001"), MineSays: txt(mine, "#approved-9001"),
			MineReject: !!q(mine, "#reject-9001"), Other: txt(other, ".approvals"), OtherBtn: !!q(other, "#accept-9002"),
			OtherEdited: txt(other, ".edited-data"), None: txt(none, ".approvals"), NoneBtn: !!q(none, "#accept-9003"),
			Own: txt(own, "#approved-9004"), OwnBtn: !!q(own, "#accept-9004"), Title: title}); })()`, net.IDs[nA].String())).(string)
	if err := json.Unmarshal([]byte(raw), &ap); err != nil {
		t.Fatalf("approvals: %v (%q)", err, raw)
	}
	shot("05b-approvals")
	eval("remove the approvals", `document.querySelector("#approvals-demo").remove()`)
	switch {
	case !strings.HasPrefix(ap.Mine, "approvals 1 of 2: C at ") || !strings.HasSuffix(ap.Mine, "waiting for 1 more"):
		t.Fatalf("the approving node's card says %q", ap.Mine)
	case ap.MineBtn || ap.MineSays != "approved by you, waiting for 1 more" || !ap.MineReject:
		t.Fatalf("the approving node: accept button %v, says %q, reject button %v", ap.MineBtn, ap.MineSays, ap.MineReject)
	case !strings.HasPrefix(ap.Other, "approvals 1 of 2: S at ") || !strings.Contains(ap.Other, "waiting for 1 more · of the edited data") || !ap.OtherBtn:
		t.Fatalf("another node's approval: %q, accept button %v", ap.Other, ap.OtherBtn)
	case ap.OtherEdited != `edited data {"n":2} (accepting approves it)`:
		t.Fatalf("the edit that waits: %q", ap.OtherEdited)
	case ap.None != "approvals 0 of 2 · waiting for 2 more" || !ap.NoneBtn:
		t.Fatalf("no approval yet: %q, accept button %v", ap.None, ap.NoneBtn)
	case ap.OwnBtn || !strings.Contains(ap.Own, "does not count"):
		t.Fatalf("the applicant's node: accept button %v, says %q", ap.OwnBtn, ap.Own)
	case !strings.HasPrefix(ap.Title, "Approve request 9003?") || !strings.Contains(ap.Title, "once 1 more reviewer node accepted the same data") ||
		!strings.Contains(ap.Title, " | Accept request 9002?"):
		// The first of two approvals is kept; the second decides.
		t.Fatalf("the confirmations: %q", ap.Title)
	}
	eval("waiting only", `(() => { const s = document.querySelector("#status"); s.value = "waiting"; s.dispatchEvent(new Event("change")); return true })()`)

	// The acknowledgement rows, newest first, with a filter.
	run("acks", chromedp.Click(css("#tab-acks")))
	waitText("#acks", "decision")
	run("filter", chromedp.SetValue(css("#f-state"), "sended"), chromedp.Click(css("#ack-filters button")))
	waitText("#acks-page", "newest")
	fits("acknowledgements")
	shot("06-acks")
	run("peers", chromedp.Click(css("#tab-peers")))
	waitText("#peers", "connected")

	// Rates: C creates resources (its partners A and B receive them) until
	// the Peers view shows a delivery rate and a sparkline with deliveries
	// in at least three samples.
	rated := `[...document.querySelectorAll("#peers .rate-now")].some((e) => e.textContent !== "0.0/s") &&
		[...document.querySelectorAll("#peers .spark")].some((s) => !!s.querySelector("polyline") &&
			Number(s.dataset.busy) >= 3 && !/peak 0\.0\//.test(s.getAttribute("aria-label")))`
	deadline := time.Now().Add(3 * step)
	for vm := 0; ; vm++ {
		var out struct{ OK bool }
		testnet.Request(t, net.NATS(nC), "ferry.propagate", fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"vm%d"}}`, vm), &out)
		if !out.OK {
			t.Fatalf("propagate vm%d refused", vm)
		}
		pctx, c := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := chromedp.Run(pctx, chromedp.Poll[bool](rated, chromedp.WithPollingInterval(50*time.Millisecond)))
		c()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			shot("failed")
			t.Fatalf("no delivery rate in the Peers view: %s", text("#peers"))
		}
	}
	if n, _ := eval("sparklines", `document.querySelectorAll("#peers .spark").length`).(float64); n < 2 {
		t.Fatalf("%v sparklines in the Peers view, want one per peer", n)
	}
	fits("peers")
	shot("07-peers-rates")

	// Cross-links: a peer's name opens its rows, a row's id its trace.
	run("A's rows", chromedp.Click(css(`#peers .rows-link[title$=" A"]`)))
	run("the Acknowledgements view", chromedp.WaitVisible(css("#view-acks")))
	poll("rows of A only", `(() => { const rs = [...document.querySelectorAll("#acks tbody tr")];
		return document.querySelector("#f-receiver").value === "A" && rs.length > 0 && rs.every((r) => r.children.length > 2 && r.children[2].textContent === "A"); })()`)
	shot("08-acks-of-a")
	run("a row's trace", chromedp.Click(css("#acks tbody .trace-link")))
	waitText("#trace-table", "(origin)")
	if ref, _ := eval("trace ref", `document.querySelector("#trace-ref").value`).(string); !strings.HasPrefix(ref, "C/") {
		t.Fatalf("the trace view traces %q, want a change of C", ref)
	}
	waitText("#trace-table", "A")
	shot("09-trace-of-a-row")

	// Flows: fit to the width by default, full size on a click, and a link
	// to the SVG alone.
	run("flows", chromedp.Click(css("#tab-flows")))
	fits("flows")
	poll("a flow diagram", `(() => { const i = document.querySelector("#flow-img"); return i.complete && i.naturalWidth > 0; })()`)
	if href, _ := eval("svg link", `document.querySelector("#flow-open").href`).(string); !strings.HasSuffix(href, ".svg") || !strings.Contains(href, "/flows/") {
		t.Fatalf("the flow's link: %q", href)
	}
	poll("the SVG opens alone", `(async () => { const r = await fetch(document.querySelector("#flow-open").href);
		return r.ok && (r.headers.get("Content-Type") || "").startsWith("image/svg+xml"); })()`)
	poll("the diagram fits", `(() => { const i = document.querySelector("#flow-img"), b = document.querySelector("#flow-box");
		return i.getBoundingClientRect().width <= b.clientWidth; })()`)
	shot("10-flows-fit")
	run("full size", chromedp.Click(css("#flow-img")))
	poll("the diagram at full size", `(() => { const i = document.querySelector("#flow-img");
		return document.querySelector("#flow-box").classList.contains("full") && Math.abs(i.getBoundingClientRect().width - i.naturalWidth) < 2; })()`)
	fits("flows at full size")
	shot("11-flows-full")
	run("back to the queue", chromedp.Click(css("#tab-queue")))

	// A stops: a decision waits for it, the message says who applied it so
	// far, and its rows' errors are grouped with the full text on demand.
	net.Stop(nA)
	down := submit(t, net, nB, `{"type":"insert","table_name":"tb","table_id":5,"data":{"name":"five"}}`)
	run("the request with A down", chromedp.Click(css("#refresh")), chromedp.WaitVisible(css(fmt.Sprintf("#accept-%d", down))))
	press(fmt.Sprintf("#accept-%d", down))
	run("accept with A down", chromedp.WaitVisible(css("#confirm")), chromedp.Click(css("#confirm-ok")))
	waitText("#messages", "applied by 2/3 members (waiting for A)")
	run("acks", chromedp.Click(css("#tab-acks")))
	eval("any receiver", `(() => { document.querySelector("#f-receiver").value = ""; return true })()`)
	run("pending rows", chromedp.SetValue(css("#f-state"), "pending"), chromedp.Click(css("#ack-filters button")))
	poll("A's errors grouped", `(() => { document.querySelector("#acks-newest").click(); const d = document.querySelector("#errors-A");
		return !!d && /A: \d+ rows? failing/.test(d.querySelector("summary").textContent); })()`)
	if open, _ := eval("closed", `document.querySelector("#errors-A").open`).(bool); open {
		t.Fatal("the error group starts open; the full text should be on demand")
	}
	eval("open A's errors", `document.querySelector("#errors-A summary").click()`)
	// Open it stays, across the refreshes that redraw the rows.
	before = text("#updated")
	poll("a refresh", fmt.Sprintf(`document.querySelector("#updated").textContent !== %q`, before))
	poll("the full text", `document.querySelector("#errors-A").open && document.querySelector("#errors-A pre").getClientRects().length > 0`)
	fits("acknowledgements with errors")
	shot("12-errors-grouped")

	// A is gone for good: the operator removes it (a partner first as a
	// partner), and its pending rows close with the reason.
	if err := net.Node(nC).SetPartner(context.Background(), net.IDs[nA], false); err != nil {
		t.Fatal(err)
	}
	if err := net.Node(nC).SetMember(context.Background(), net.IDs[nA], false); err != nil {
		t.Fatal(err)
	}
	run("closed rows", chromedp.SetValue(css("#f-state"), "closed"), chromedp.Click(css("#ack-filters button")))
	poll("A's rows closed with the reason", `(() => { const rs = [...document.querySelectorAll("#acks tbody tr")];
		return rs.length > 0 && rs.every((r) => r.children.length === 9 && r.children[2].textContent === "A" && r.children[4].textContent === "closed" &&
			r.children[8].classList.contains("reason") && r.children[8].textContent.startsWith("member removed by the operator at ")); })()`)
	// The decision's message stops waiting for A and says it left.
	waitText("#messages", "applied by 2/2 members; left before they had it: A.")
	fits("closed acknowledgements")
	shot("12b-closed-rows")

	// The Grafana dashboard's links name a view and a receiver.
	run("a dashboard link", chromedp.Navigate(base+"/#view=acks&receiver=B"), chromedp.WaitVisible(css("#view-acks")))
	poll("rows of B", `document.querySelector("#f-receiver").value === "B" && location.hash === "" &&
		[...document.querySelectorAll("#acks tbody tr")].some((r) => r.children.length > 2 && r.children[2].textContent === "B")`)
	run("back to the queue", chromedp.Click(css("#tab-queue")))

	// A request waits, then the node stops: the page says so and disables actions.
	late := submit(t, net, nB, `{"type":"insert","table_name":"tb","table_id":4,"data":{"name":"four"}}`)
	run("the late request", chromedp.Click(css("#refresh")), chromedp.WaitVisible(css(fmt.Sprintf("#accept-%d", late))))
	net.Stop(nC)
	waitText("#conn", "disconnected")
	run("banner", chromedp.WaitVisible(css("#offline")))
	if disabled, _ := eval("accept disabled", fmt.Sprintf(`document.querySelector("#accept-%d").disabled`, late)).(bool); !disabled {
		t.Fatal("the accept button stays enabled while the node is down")
	}
	shot("13-disconnected")
	t.Logf("screenshots in %s", dir)
}
