// Ferry console: talks to this node's admin API with the bearer token kept
// for the browser session. No external code; everything is in this file.
"use strict";
const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000;

// A link may carry the token as #token=...: kept for this browser session,
// then dropped from the address bar. It may also name a view and a receiver
// (#view=acks&receiver=B, as the Grafana dashboard's links do).
const hash = new URLSearchParams(location.hash.slice(1));
const fromHash = hash.get("token");
if (fromHash) sessionStorage.setItem("ferry-token", fromHash);
if (location.hash) history.replaceState(null, "", location.pathname);
let token = sessionStorage.getItem("ferry-token") || "";

const state = {
  status: null, online: null, lastOK: null,
  view: ["queue", "acks", "peers", "trace", "flows"].includes(hash.get("view")) ? hash.get("view") : "queue",
  details: new Map(), // request id -> detail (current row, diff, receivers)
  ackCursor: "", ackPages: [], ackNext: "",
  busy: false,
  tracked: new Map(), // request id -> the message span that says who applied its decision
};

// ---- small helpers ----
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
function json(v) { return v === undefined ? "" : JSON.stringify(v); }
function ago(t) {
  if (!t) return "-";
  const d = (Date.now() - new Date(t).getTime()) / 1000;
  const a = Math.abs(d);
  let s;
  if (a < 1) return "just now";
  if (a < 60) s = Math.floor(a) + "s";
  else if (a < 3600) s = Math.floor(a / 60) + "m";
  else if (a < 172800) s = Math.floor(a / 3600) + "h";
  else s = Math.floor(a / 86400) + "d";
  return d >= 0 ? s + " ago" : "in " + s;
}
function timeCell(t) {
  const td = el("td", {text: ago(t)});
  if (t) td.title = new Date(t).toISOString();
  return td;
}
function fromUnix(s) { return s ? new Date(s * 1000).toISOString() : null; }

// ---- messages: they stay until dismissed ----
let msgSeq = 0;
function say(text, isErr) {
  // The same error again (a refresh that keeps failing) is not repeated.
  const last = $("messages").lastElementChild;
  if (isErr && last && last.classList.contains("err") && last.firstChild.textContent === text) return last;
  const id = "msg-" + (++msgSeq);
  const m = el("div", {class: "msg" + (isErr ? " err" : ""), id, role: isErr ? "alert" : "status"},
    el("span", {text}),
    el("button", {type: "button", class: "link", "aria-label": "Dismiss message", text: "Dismiss", onclick: () => m.remove()}));
  $("messages").append(m);
  return m;
}

// ---- the API ----
class Offline extends Error {}
async function api(method, path, body) {
  let res;
  try {
    res = await fetch("/api/v1/" + path, {
      method, headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
  } catch (e) {
    setOnline(false);
    throw new Offline("the node does not answer");
  }
  setOnline(true);
  const out = await res.json().catch(() => ({ok: false, error: {code: "unavailable", message: res.status + " " + res.statusText}}));
  if (res.status === 401) { signOut("The token was refused: " + (out.error ? out.error.message : "401")); throw new Error("signed out"); }
  if (!out.ok) throw new Error(out.error ? out.error.message + " (" + out.error.code + ")" : res.statusText);
  return out;
}

// ---- connection state ----
function setOnline(up) {
  if (state.online === up) return;
  state.online = up;
  const c = $("conn");
  c.className = "conn " + (up ? "up" : "down");
  c.textContent = up ? "connected" : "disconnected";
  document.body.classList.toggle("offline", !up);
  $("offline").hidden = up;
  if (!up) $("offline-since").textContent = state.lastOK ? state.lastOK.toLocaleTimeString() : "before the node stopped";
  for (const b of document.querySelectorAll(".needs-node")) b.disabled = !up;
  if (!up) { const d = $("confirm"); if (d.open) d.close("cancel"); }
}

// ---- sign in and out ----
function signOut(why) {
  token = "";
  sessionStorage.removeItem("ferry-token");
  $("login").hidden = false;
  $("tabs").hidden = true;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("who").textContent = "not signed in";
  $("facts").textContent = "";
  showGroup(null);
  // Not signed in is neither connected nor disconnected: the node answered,
  // but this page may not use it.
  state.online = null;
  $("conn").className = "conn unknown";
  $("conn").textContent = "not signed in";
  $("offline").hidden = true;
  document.body.classList.remove("offline");
  state.tracked.clear();
  if (why) say(why, true).classList.add("token-refused");
  $("token").focus();
}
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("ferry-token", token);
  start();
});
$("signout").addEventListener("click", () => signOut());

// ---- tabs (arrow keys move between them) ----
const tabs = ["queue", "acks", "peers", "trace", "flows"];
function show(view) {
  state.view = view;
  for (const t of tabs) {
    $("tab-" + t).setAttribute("aria-selected", t === view ? "true" : "false");
    $("tab-" + t).tabIndex = t === view ? 0 : -1;
    $("view-" + t).hidden = t !== view;
  }
  refresh();
}
for (const t of tabs) {
  $("tab-" + t).addEventListener("click", () => show(t));
  $("tab-" + t).addEventListener("keydown", (e) => {
    const i = tabs.indexOf(t);
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      const n = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      show(n); $("tab-" + n).focus(); e.preventDefault();
    }
  });
}

// ---- header ----
async function loadStatus() {
  const st = (await api("GET", "status")).status;
  state.status = st;
  state.lastOK = new Date();
  // Signed in now: a refused token's message is history.
  for (const m of document.querySelectorAll(".msg.token-refused")) m.remove();
  $("who").textContent = st.name + (st.is_reviewer ? " · reviewer" : " · member");
  $("who").title = st.peer_id;
  $("facts").replaceChildren(
    "peers ", el("b", {text: st.peers_up + " up"}), " / " + st.peers_down + " down · backlog ",
    el("b", {text: String(st.pending_acks)}), " · waiting ", el("b", {text: String(st.waiting_requests)}),
    " · updated ", el("span", {id: "updated", text: state.lastOK.toLocaleTimeString()}));
  $("queue-count").textContent = st.waiting_requests ? String(st.waiting_requests) : "";
  showGroup(st.review_group);
}

// ---- the review group, in the header (a reviewer of a group only) ----
// One chip per reviewer of the group's configuration: its name, "leader" or
// its raft state, and how it stands. The leader: its applied index. A
// follower: how far its applied index is behind the leader's ("in step" or
// "N behind"; only while the leader answers) and its last contact with the
// leader. A reviewer that did not answer: when this node last heard from it.
// No leader, or this node cut off from a majority, turns the line red with
// the reason. The node asks the reviewers at most once a second for every
// console (GroupStatus in admin/groupview.go).
function showGroup(gs) {
  const box = $("group");
  if (!gs) { box.hidden = true; box.replaceChildren(); return; }
  box.hidden = false;
  box.classList.toggle("warn", !!gs.warning);
  const servers = gs.servers || [];
  const lead = servers.find((s) => s.leader && s.status);
  const chips = servers.map((s) => {
    let cls = "rv", text, title = s.name + " " + s.id + " (" + s.suffrage.toLowerCase() + ")";
    if (!s.status) {
      cls += " down";
      text = "not answering" + (s.last_heard ? ", heard " + ago(s.last_heard) : "");
      title += "\n" + (s.error || "no answer");
    } else {
      const st = s.status;
      title += "\nterm " + st.term + ", log " + st.last_log_index + ", commit " + st.commit_index + ", applied " + st.applied_index;
      if (s.leader) {
        cls += " leader";
        text = "leader, applied " + st.applied_index;
      } else {
        const parts = [st.state.toLowerCase()];
        if (lead) {
          const behind = Math.max(0, lead.status.applied_index - st.applied_index);
          if (behind) cls += " behind";
          parts.push(behind ? behind + " behind" : "in step");
        }
        parts.push(st.last_contact ? "contact " + ago(st.last_contact) : "no contact");
        text = parts.join(", ");
        if (st.last_contact) title += "\nlast contact with the leader " + new Date(st.last_contact).toISOString();
      }
    }
    return el("span", {class: cls, "data-name": s.name, title},
      el("b", {text: s.name}), s.self ? el("span", {class: "here", text: " (this node)"}) : null, " " + text);
  });
  const warning = gs.warning ? [el("span", {id: "group-warning", class: "group-warning", role: "alert", text: gs.warning})] : [];
  box.replaceChildren(el("span", {class: "group-label", text: "review group"}), ...warning, ...chips);
}

// ---- who applied a decision ----
// On the reviewer: a decision is applied here when it is made, then by each
// receiver when its acknowledgement row turns "sended" (an accept or an edit
// goes to every member, a rejection to the applicant only). The node finds
// the rows by the decision's change version: one short read per request.
const MAX_APPLIED = 20; // decided cards that show "applied by" (one call each)
state.applied = new Map(); // request id -> the node's answer
async function appliedBy(r) {
  return (await api("GET", "requests/" + r.id + "/applied")).applied;
}
function appliedText(a, r) {
  const refused = a.refused.length ? "; refused by " + a.refused.join(", ") : "";
  if (r.status === "rejected") return (a.total === 0 ? "the applicant is this node" : (a.done ? "received by the applicant " :
    "not yet received by the applicant ") + r.applicant + " (" + a.done + "/" + a.total + ")") + refused;
  const left = a.left && a.left.length ? "; left before they had it: " + a.left.join(", ") : "";
  return "applied by " + a.done + "/" + a.total + " members" + (a.waiting.length ? " (waiting for " + a.waiting.join(", ") + ")" : "") + refused + left;
}
// refreshTracked updates the success messages of this session's decisions
// until every receiver has applied them.
async function refreshTracked() {
  for (const [id, span] of state.tracked) {
    if (!span.isConnected) { state.tracked.delete(id); continue; }
    const a = await appliedBy(span.request);
    span.textContent = appliedText(a, span.request) + ".";
    if (a.waiting.length === 0) state.tracked.delete(id);
  }
}

// ---- review queue ----
async function loadQueue() {
  const st = state.status;
  const q = $("status").value;
  // One page of at most 1000 requests; `ferry requests list` pages through all.
  const reqs = (await api("GET", "requests?limit=1000" + (q ? "&status=" + encodeURIComponent(q) : ""))).requests;
  reqs.sort((a, b) => b.id - a.id);
  const waiting = reqs.filter((r) => r.status === "waiting");
  // Details (current row, diff, receivers) for waiting rows.
  await Promise.all(waiting.map(async (r) => {
    try { state.details.set(r.id, await api("GET", "requests/" + r.id)); } catch (e) { if (e instanceof Offline) throw e; }
  }));
  $("reviewer-note").textContent = st.is_reviewer ? "" :
    "This node is not the reviewer: decisions are made on the reviewer (" + (st.reviewer || "none configured") + ").";
  // Who applied each decision, for the newest decided rows shown.
  await Promise.all(reqs.filter((r) => st.is_reviewer && r.status !== "waiting").slice(0, MAX_APPLIED).map(async (r) => {
    try { state.applied.set(r.id, await appliedBy(r)); } catch (e) { if (e instanceof Offline) throw e; }
  }));
  const box = $("requests");
  if (reqs.length === 0) {
    box.replaceChildren(el("div", {class: "empty", id: "empty-queue"},
      ...(q === "waiting" ? ["No request is waiting for a decision. When an app submits a change on ",
        el("code", {text: "ferry.review.submit"}), " (or an operator runs ", el("code", {text: "ferry submit"}), "), it appears here."] :
        ["No request with this status."])));
    return;
  }
  box.replaceChildren(...reqs.map((r) => requestCard(r, st)));
}

function requestCard(r, st) {
  const d = state.details.get(r.id);
  const card = el("article", {class: "card", id: "req-" + r.id, "aria-label": "request " + r.id});
  card.append(el("h3", {}, "#" + r.id + " · " + r.type + " " + r.table_name + " row " + r.table_id + " · ",
    el("span", {class: r.status, text: r.status}), r.sequence ? " · sequence " + r.sequence : ""));
  const created = el("span", {text: ago(fromUnix(r.created_at))});
  created.title = fromUnix(r.created_at) || "";
  card.append(el("div", {class: "meta"}, "from " + r.applicant + " · ", created,
    " · “" + (r.description.sender || "no description") + "”"));
  if (r.status !== "waiting") {
    const at = fromUnix(r.decided_at);
    const dec = el("span", {class: "decided-at", text: at ? "decided " + ago(at) + " (" + new Date(at).toLocaleString() + ")" : "decided (time not recorded)"});
    if (at) dec.title = at;
    const a = state.applied.get(r.id);
    card.append(el("div", {class: "meta"}, dec, a ? el("span", {class: "applied", text: " · " + appliedText(a, r)}) : null));
  }
  // The note, when the reviewer wrote one (otherwise the node filled in the
  // default: added, updated, deleted, edited or rejected).
  const note = r.description.receiver;
  if (note && note !== defaultNote(r)) {
    card.append(el("blockquote", {class: "note"}, el("span", {class: "muted", text: (r.reviewer || "The reviewer") + " wrote to the applicant:"}),
      el("br"), note));
  }
  if (r.status === "waiting" && d) {
    card.append(diffTable(d));
  } else {
    card.append(el("div", {class: "meta mono", text: "data " + json(r.data)}));
  }
  if (r.status === "waiting" && r.edited_data) {
    card.append(el("div", {class: "meta mono edited-data", text: "edited data " + json(r.edited_data) + " (accepting approves it)"}));
  }
  if (r.conflict) card.append(el("div", {class: "conflict", text: "Accepting now would be refused: " + r.conflict}));
  const ap = approvalsOf(r, st);
  if (ap.text) card.append(el("div", {class: "approvals", id: "approvals-" + r.id}, ap.text));
  if (r.status === "waiting" && st.is_reviewer) {
    const off = !state.online;
    // A node that approved the data the request waits on, or the applicant's
    // own node while more than one approval is needed, is not offered the
    // accept button again: the node would refuse it.
    const accept = ap.mine ? el("span", {class: ap.mine.startsWith("approved") ? "approved" : "approved muted", id: "approved-" + r.id, text: ap.mine}) :
      el("button", {type: "button", class: "primary needs-node", disabled: off, id: "accept-" + r.id, onclick: () => decide(r, "accept")}, "Accept…");
    card.append(el("div", {class: "decide"}, accept,
      r.type !== "delete" ? el("button", {type: "button", class: "needs-node", disabled: off, id: "edit-" + r.id, onclick: () => decide(r, "edit")}, "Edit…") : null,
      el("button", {type: "button", class: "danger needs-node", disabled: off, id: "reject-" + r.id, onclick: () => decide(r, "reject")}, "Reject…")));
  }
  return card;
}

// approvalsOf reads a waiting request's approvals (review.approvals > 1):
// the line that says who approved it and what it still needs ("approvals 1
// of 2: S at 12:00:01 · waiting for 1 more"), and, when this node may not
// accept it again, why ("approved by you, waiting for 1 more"). With one
// approval needed both are empty: one accept decides.
function approvalsOf(r, st) {
  const list = r.approvals || [], need = r.approvals_required || 0;
  if (r.status !== "waiting" || (need <= 1 && list.length === 0)) return {text: "", mine: ""};
  const more = Math.max(need - list.length, 0);
  const who = list.map((a) => a.reviewer + " at " + new Date(a.at * 1000).toLocaleTimeString());
  const text = "approvals " + list.length + " of " + need + (who.length ? ": " + who.join(", ") : "") +
    (more ? " · waiting for " + more + " more" : "") + (r.edited_data ? " · of the edited data" : "");
  let mine = "";
  if (st && list.some((a) => a.reviewer_id === st.peer_id)) mine = "approved by you, waiting for " + more + " more";
  else if (st && need > 1 && r.applicant_id === st.peer_id) mine = "submitted here: this node's approval does not count, waiting for " + more + " more";
  return {text, mine};
}

function defaultNote(r) {
  if (r.status === "rejected" || r.status === "edited") return r.status;
  return {insert: "added", update: "updated"}[r.type] || "deleted";
}

function diffTable(d) {
  const rows = d.diff.map((f) => el("tr", {class: f.change},
    el("td", {text: f.field}), el("td", {text: f.change}), el("td", {text: f.before ? json(f.before) : "-"}), el("td", {text: f.after ? json(f.after) : "-"})));
  const cur = d.current === null ? "the row does not exist yet" : json(d.current);
  return el("div", {},
    el("div", {class: "meta"}, "current row: ", el("code", {text: cur})),
    el("table", {class: "diff"}, el("thead", {}, el("tr", {}, el("th", {text: "field"}), el("th", {text: "change"}),
      el("th", {text: "current"}), el("th", {text: "after accepting"}))), el("tbody", {}, ...rows)));
}

// ---- deciding: a dialog that says who receives the decision ----
let pending = null;
function decide(r, decision) {
  if (!state.online) return;
  const d = state.details.get(r.id);
  const recv = d ? (decision === "reject" ? d.receivers.reject : d.receivers.accept) : [];
  const to = recv.length ? recv.join(", ") : "no other node";
  const what = r.type + " " + r.table_name + " row " + r.table_id;
  $("confirm-error").textContent = "";
  $("note").value = "";
  $("edit-fields").hidden = decision !== "edit";
  const more = Math.max((r.approvals_required || 1) - (r.approvals || []).length, 1);
  if (decision === "accept" && more > 1) {
    $("confirm-title").textContent = "Approve request " + r.id + "?";
    $("confirm-text").textContent = "Your approval of the change (" + what + ") is kept; it is applied and goes to every member (" + to +
      ") once " + (more - 1) + " more reviewer node" + (more > 2 ? "s" : "") + " accepted the same data.";
    $("confirm-ok").textContent = "Approve";
  } else if (decision === "accept") {
    $("confirm-title").textContent = "Accept request " + r.id + "?";
    $("confirm-text").textContent = "The change (" + what + ") is applied here and the decision goes to every member: " + to + ". It cannot be undone.";
    $("confirm-ok").textContent = "Accept";
  } else if (decision === "reject") {
    $("confirm-title").textContent = "Reject request " + r.id + "?";
    $("confirm-text").textContent = "Nothing changes in " + r.table_name + ". The rejection goes to the applicant only: " + to + ".";
    $("confirm-ok").textContent = "Reject";
  } else {
    $("confirm-title").textContent = "Edit request " + r.id + " (" + what + ")";
    $("confirm-text").textContent = (r.approvals_required || 1) > 1 ?
      "Change the values, then save: the edit starts a new round of approvals (" + r.approvals_required + " reviewer nodes must accept the edited data); then it is applied and goes to every member: " + to + "." :
      "Change the values, then save: the edited data is applied here and the decision goes to every member: " + to + ".";
    $("confirm-ok").textContent = "Save edit";
    fillFields(r, d);
  }
  pending = {r, decision};
  $("confirm").showModal();
  const first = decision === "edit" ? document.querySelector("#edit-fields tbody input") : $("note");
  if (first) first.focus();
}

function fillFields(r, d) {
  const tb = document.querySelector("#edit-fields tbody");
  tb.replaceChildren();
  const cur = d && d.current ? d.current : {};
  for (const [k, v] of Object.entries(r.edited_data || r.data || {})) tb.append(fieldRow(k, v, cur[k], false));
}

function fieldRow(name, value, current, isNew) {
  const nameIn = el("input", {"aria-label": "field name", value: name, readonly: !isNew, class: "fname"});
  const valIn = el("input", {"aria-label": "value of " + (name || "new field"), class: "fval",
    value: value === undefined ? "" : (typeof value === "string" ? value : JSON.stringify(value))});
  const tr = el("tr", {},
    el("td", {}, nameIn), el("td", {class: "mono", text: current === undefined ? "-" : json(current)}), el("td", {}, valIn),
    el("td", {}, el("button", {type: "button", class: "link", "aria-label": "remove field " + name, text: "remove", onclick: () => tr.remove()})));
  return tr;
}
$("add-field").addEventListener("click", () => {
  const tr = fieldRow("", "", undefined, true);
  document.querySelector("#edit-fields tbody").append(tr);
  tr.querySelector("input").focus();
});

// editedData reads the form: a value is JSON if it parses, else text.
function editedData() {
  const out = {};
  for (const tr of document.querySelectorAll("#edit-fields tbody tr")) {
    const name = tr.querySelector(".fname").value.trim();
    const raw = tr.querySelector(".fval").value;
    if (!name) throw new Error("every field needs a name");
    if (name === "id") throw new Error("the id is the table id; it cannot be edited");
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new Error("field name “" + name + "” must be 1-64 letters, digits, '_', '-' or '.'");
    if (name in out) throw new Error("field “" + name + "” appears twice");
    let v;
    try { v = JSON.parse(raw); } catch (e) { v = raw; }
    out[name] = v;
  }
  if (Object.keys(out).length === 0) throw new Error("an edit needs at least one field");
  return out;
}

$("confirm-form").addEventListener("submit", async (e) => {
  if (e.submitter && e.submitter.value === "cancel") { pending = null; return; }
  e.preventDefault();
  if (!pending || state.busy) return;
  const {r, decision} = pending;
  const body = {note: $("note").value.trim()};
  if (decision === "edit") {
    try { body.data = editedData(); } catch (err) { $("confirm-error").textContent = err.message; return; }
  }
  state.busy = true;
  $("confirm-ok").disabled = true;
  try {
    const out = await api("POST", "requests/" + r.id + "/" + decision, body);
    $("confirm").close("ok");
    pending = null;
    const row = out.request;
    if (row.status === "waiting") {
      // An approval kept: the request waits for more (review.approvals).
      say("Request " + r.id + " " + (approvalsOf(row, state.status).mine || "approved, still waiting") + ".");
      refresh();
      return;
    }
    const m = say("Request " + r.id + " " + row.status + (row.sequence ? " as decision " + row.sequence : "") + ": ");
    const span = el("span", {class: "applied", text: row.status === "rejected" ? "the rejection goes to " + row.applicant + "." :
      "applied here; the decision goes to every member."});
    span.request = row;
    m.firstChild.append(span);
    state.tracked.set(row.id, span);
  } catch (err) {
    if (err instanceof Offline) { say("Request " + r.id + ": the node does not answer; the decision was not confirmed.", true); }
    else $("confirm-error").textContent = err.message;
    if (!(err instanceof Offline)) return;
  } finally {
    state.busy = false;
    $("confirm-ok").disabled = !state.online;
  }
  refresh();
});

// ---- acknowledgements ----
async function loadAcks() {
  const p = new URLSearchParams();
  const rcv = $("f-receiver").value.trim(), s = $("f-state").value, k = $("f-kind").value;
  if (rcv) p.set("receiver", rcv);
  if (s) p.set("state", s);
  if (k) p.set("kind", k);
  if (state.ackCursor) p.set("before", state.ackCursor);
  p.set("limit", "50");
  const out = await api("GET", "acks?" + p.toString());
  state.ackNext = out.next || "";
  const tb = $("acks").tBodies[0];
  const origin = state.status ? state.status.name : "";
  tb.replaceChildren(...out.acks.map((a) => el("tr", {},
    el("td", {class: "mono"}, el("button", {type: "button", class: "link trace-link", title: "Trace change " + origin + "/" + a.version + " on every node",
      text: a.id, onclick: () => traceChange(origin + "/" + a.version)})),
    el("td", {text: a.request_id || "-"}), el("td", {text: a.receiver, title: a.receiver_id}),
    el("td", {text: a.kind}), el("td", {class: a.ack, text: a.ack}), el("td", {text: String(a.attempts)}),
    timeCell(a.created_at), timeCell(a.next_attempt_at), a.reason ? el("td", {class: "reason", text: a.reason}) :
      el("td", {class: "err", text: firstLine(a.error), title: a.error || ""}))));
  errorGroups(out.acks);
  if (out.acks.length === 0) tb.append(el("tr", {}, el("td", {colspan: "9", class: "muted", text: "No acknowledgement rows match."})));
  $("acks-older").disabled = !state.ackNext;
  $("acks-newest").disabled = !state.ackCursor;
  $("acks-page").textContent = state.ackCursor ? "page " + (state.ackPages.length + 1) + " (older rows)" : "newest rows";
}
function firstLine(e) {
  if (!e) return "";
  const l = e.split("\n")[0];
  return l.length > 90 ? l.slice(0, 89) + "…" : l;
}
// errorGroups lists the rows of this page that carry an error, one line per
// receiver with the count of rows; the full texts open on demand.
const openErrors = new Set(); // receivers whose full texts are open: they stay open across refreshes
function errorGroups(rows) {
  const by = new Map();
  for (const a of rows) {
    if (!a.error) continue;
    const g = by.get(a.receiver) || {rows: 0, texts: new Map()};
    g.rows++;
    g.texts.set(a.error, (g.texts.get(a.error) || 0) + 1);
    by.set(a.receiver, g);
  }
  const box = $("ack-errors");
  box.hidden = by.size === 0;
  box.replaceChildren(...(by.size ? [el("h2", {text: "Errors on this page, by receiver"})] : []),
    ...[...by].map(([rcv, g]) => el("details", {class: "errgroup", id: "errors-" + rcv, open: openErrors.has(rcv),
        ontoggle: (e) => { if (e.target.open) openErrors.add(rcv); else openErrors.delete(rcv); }},
      el("summary", {}, el("b", {text: rcv}), ": " + g.rows + (g.rows === 1 ? " row" : " rows") + " failing · ",
        el("span", {class: "err", text: firstLine([...g.texts.keys()][0])})),
      ...[...g.texts].map(([t, c]) => el("pre", {class: "errtext", text: (c > 1 ? c + " rows:\n" : "") + t})))));
}
// showAcksOf opens the Acknowledgements view filtered by one receiver.
function showAcksOf(name) {
  filterAcks(name);
  show("acks");
}
function filterAcks(receiver) {
  $("f-receiver").value = receiver;
  $("f-state").value = "";
  $("f-kind").value = "";
  state.ackCursor = ""; state.ackPages = [];
}
if (hash.get("receiver")) $("f-receiver").value = hash.get("receiver");
// A link followed in an open console changes only the hash.
window.addEventListener("hashchange", () => {
  const h = new URLSearchParams(location.hash.slice(1));
  history.replaceState(null, "", location.pathname);
  if (h.get("token")) { token = h.get("token"); sessionStorage.setItem("ferry-token", token); }
  if (h.get("receiver") !== null) { filterAcks(h.get("receiver")); state.view = "acks"; }
  else if (tabs.includes(h.get("view"))) state.view = h.get("view");
  if (!token) return;
  if (h.get("token") || !$("login").hidden) start(); else show(state.view);
});
$("ack-filters").addEventListener("submit", (e) => { e.preventDefault(); state.ackCursor = ""; state.ackPages = []; refresh(); });
$("acks-older").addEventListener("click", () => { state.ackPages.push(state.ackCursor); state.ackCursor = state.ackNext; refresh(); });
$("acks-newest").addEventListener("click", () => { state.ackCursor = ""; state.ackPages = []; refresh(); });

// ---- peers ----
async function loadPeers() {
  const [peers, dels, rates] = await Promise.all([api("GET", "peers?limit=1000"), api("GET", "deliveries"), api("GET", "rates")]);
  const rateOf = new Map(rates.rates.map((r) => [r.receiver_id, r]));
  $("rates-note").textContent = "Deliveries/s: changes a peer acknowledged per second, sampled every " + rates.interval_seconds +
    " s by this node; the line shows up to the last " + Math.round(RATE_SAMPLES * rates.interval_seconds / 60) +
    " minutes (at least one minute wide; hover it for the peak).";
  const byPeer = new Map();
  for (const d of dels.deliveries) {
    const x = byPeer.get(d.receiver_id) || {pending: 0, oldest: null, err: ""};
    x.pending += d.pending;
    if (d.oldest_pending && (!x.oldest || d.oldest_pending < x.oldest)) x.oldest = d.oldest_pending;
    if (d.last_error) x.err = d.last_error;
    byPeer.set(d.receiver_id, x);
  }
  const st = state.status;
  $("catchup").textContent = "Last catch-up: " + (st.last_catch_up ? ago(st.last_catch_up) + " (" + st.last_catch_up + ")" : "none since the node started") +
    ". Decisions applied here: " + st.decision_applied + ".";
  $("receivers").replaceChildren(...peers.peers.map((p) => el("option", {value: p.name})));
  const tb = $("peers").tBodies[0];
  tb.replaceChildren(...peers.peers.map((p) => {
    const d = byPeer.get(p.peer_id) || {pending: 0, oldest: null, err: ""};
    return el("tr", {},
      el("td", {title: p.peer_id}, el("button", {type: "button", class: "link rows-link", title: "Acknowledgement rows for " + p.name,
        text: p.name, onclick: () => showAcksOf(p.name)})), el("td", {text: p.roles.join(", ")}),
      el("td", {class: p.connected ? "connected" : "down", text: p.connected ? "connected" : "down"}),
      p.connected ? el("td", {text: "now"}) : timeCell(p.last_seen),
      el("td", {text: String(d.pending)}), d.oldest ? timeCell(d.oldest) : el("td", {text: "-"}),
      rateCells(rateOf.get(p.peer_id)), el("td", {class: "err", text: firstLine(d.err), title: d.err}));
  }));
  if (peers.peers.length === 0) tb.append(el("tr", {}, el("td", {colspan: "8", class: "muted", text: "No peers known yet: a lone node, or discovery has not found any."})));
}

// ---- rates: deliveries/s and a sparkline of the sampled series ----
const RATE_SAMPLES = 60, MIN_SPAN = 12;
function rateCells(r) {
  const series = r ? r.series : [];
  const now = r ? r.per_second : 0;
  return el("td", {class: "rate"}, el("span", {class: "rate-now", text: fmtRate(now) + "/s"}), " ", sparkline(series));
}
function fmtRate(v) { return v >= 10 ? v.toFixed(0) : v.toFixed(1); }
function sparkline(series) {
  const W = 150, H = 24, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const max = Math.max(...series, 0);
  svg.setAttribute("role", "img");
  svg.dataset.busy = String(series.filter((v) => v > 0).length); // samples with deliveries
  svg.setAttribute("aria-label", series.length ? "last " + series.length + " samples, peak " + fmtRate(max) + "/s" : "no samples yet");
  svg.dataset.span = String(Math.max(series.length, MIN_SPAN)); // samples across the width
  const title = document.createElementNS(NS, "title");
  title.textContent = svg.getAttribute("aria-label");
  svg.append(title);
  const base = document.createElementNS(NS, "line");
  for (const [k, v] of Object.entries({x1: 0, x2: W, y1: H - 1, y2: H - 1, class: "spark-base"})) base.setAttribute(k, v);
  svg.append(base);
  if (series.length > 1) {
    // At least a minute wide; up to RATE_SAMPLES as the node keeps sampling.
    const step = W / (Math.max(series.length, MIN_SPAN) - 1), x0 = W - (series.length - 1) * step;
    const pts = series.map((v, i) => (x0 + i * step).toFixed(1) + "," + (H - 1 - (max > 0 ? v / max : 0) * (H - 3)).toFixed(1));
    const area = document.createElementNS(NS, "polygon");
    area.setAttribute("points", x0.toFixed(1) + "," + (H - 1) + " " + pts.join(" ") + " " + W + "," + (H - 1));
    area.setAttribute("class", "spark-area");
    svg.append(area);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("class", "spark-line");
    svg.append(line);
  }
  return svg;
}

// ---- trace ----
// traceChange opens the Trace view filled with one change and traces it.
function traceChange(ref) {
  $("trace-ref").value = ref;
  show("trace");
  $("trace-form").requestSubmit();
}
$("trace-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const ref = $("trace-ref").value.trim();
  const out = $("trace-out");
  out.replaceChildren(el("p", {class: "muted", text: "Tracing " + ref + "…"}));
  try {
    const t = await api("GET", "trace?ref=" + encodeURIComponent(ref));
    const tr = t.trace;
    const t0 = tr.committed_at ? new Date(tr.committed_at).getTime() : null;
    const rows = tr.nodes.map((n) => el("tr", {},
      el("td", {text: n.name + (n.role === "origin" ? " (origin)" : "")}),
      el("td", {text: n.ask_error ? "not asked: " + n.ask_error : n.held ? "holds it as version " + n.local_version : "does not hold it"}),
      el("td", {text: n.applied_at ? (t0 !== null ? "+" + (new Date(n.applied_at).getTime() - t0) + " ms" : n.applied_at) : "-"}),
      el("td", {class: n.ack || "", text: n.role === "origin" ? "committed" : (n.ack || "-") + (n.attempts ? ", " + n.attempts + " attempt(s)" : "")}),
      el("td", {class: "mono", text: n.published || "-"}), el("td", {class: "err", text: n.error || ""})));
    out.replaceChildren(
      el("p", {}, "Change " + tr.origin_name + "/" + tr.version + " (" + (tr.kind || "?") + (tr.data_type ? " " + tr.data_type : "") + ")" +
        (tr.committed_at ? ", committed " + new Date(tr.committed_at).toISOString() : "")),
      el("div", {class: "scroll"}, el("table", {id: "trace-table"}, el("thead", {}, el("tr", {}, ...["node", "holds", "applied", "ack", "published to apps", "error"].map((h) => el("th", {text: h})))), el("tbody", {}, ...rows))),
      el("h2", {text: "As PlantUML (ferry trace prints the same)"}), el("pre", {text: t.plantuml}));
  } catch (err) { out.replaceChildren(el("p", {class: "error", text: err.message})); }
});

// ---- flows: the diagrams of docs/diagrams, rendered to SVG ----
async function loadFlows() {
  if ($("flow").options.length) return;
  const res = await fetch("/flows/index.json", {cache: "no-store"}).catch(() => null);
  if (!res || !res.ok) return;
  const list = await res.json();
  $("flow").replaceChildren(...list.map((f) => el("option", {value: f.file, text: f.title})));
  showFlow();
}
function showFlow() {
  const f = $("flow").value;
  if (!f) return;
  $("flow-img").src = "/flows/" + f;
  $("flow-img").alt = "Sequence diagram: " + $("flow").selectedOptions[0].text;
  $("flow-open").href = "/flows/" + f;
}
$("flow").addEventListener("change", showFlow);
// A diagram fits the width, or shows at full size (scrolling); a click on
// it or the button switches.
function zoomFlow(full) {
  $("flow-box").classList.toggle("full", full);
  $("flow-zoom").textContent = full ? "Fit to width" : "Full size";
  $("flow-zoom").setAttribute("aria-pressed", full ? "true" : "false");
}
$("flow-zoom").addEventListener("click", () => zoomFlow(!$("flow-box").classList.contains("full")));
$("flow-img").addEventListener("click", () => zoomFlow(!$("flow-box").classList.contains("full")));

// ---- refresh loop ----
let timer = null;
let loading = false;
async function refresh() {
  if (!token || loading) return;
  loading = true;
  try {
    await loadStatus();
    if (state.tracked.size) await refreshTracked();
    if (state.view === "queue") await loadQueue();
    else if (state.view === "acks") await loadAcks();
    else if (state.view === "peers") await loadPeers();
    else if (state.view === "flows") await loadFlows();
  } catch (e) {
    if (!(e instanceof Offline) && e.message !== "signed out") say(e.message, true);
  } finally {
    loading = false;
  }
}
$("refresh").addEventListener("click", refresh);
$("status").addEventListener("change", refresh);

function start() {
  if (!token) { signOut(); return; }
  $("login").hidden = true;
  $("tabs").hidden = false;
  show(state.view);
  if (!timer) timer = setInterval(() => { if (!$("confirm").open) refresh(); }, REFRESH_MS);
}
start();
