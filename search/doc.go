// Package search is Ferry's search service (source 002): an app asks its
// node, on <prefix>.propagate with action "search", who holds a peer or a
// resource, and the answers come back on <prefix>.search.result.<query_id>.
//
//   - data type "peer": the node looks the text up in its peer book, by name
//     or peer id, and failing that asks the DHT for a peer id; it publishes
//     one result event.
//   - any other data type: the node sends a SearchQuery to every member
//     (scope "all", on the network's gossipsub topic /ferry/<network>/search/1.0.0)
//     or directly on /ferry/search/1.0.0 to the members it knows ("known") or
//     to its partners ("partner"). A peer that holds matching resources of its
//     own answers on a new /ferry/search/1.0.0 stream to the asker with one
//     SearchResults frame; the asker publishes each frame as one event while
//     the query is open.
//
// Gossipsub topics are used for search fan-out only, never for delivery:
// gossipsub has no backpressure and drops messages under load. A lost query
// or answer costs one search, never a change; owned resources and review
// decisions travel on the stream protocols with acks (package stream).
//
// Incoming queries are checked before any work: well formed, asked by the
// peer that signed the gossip message or opened the stream, from a member,
// and within a per-peer rate (a token bucket). Results are taken only for
// queries this node has open, within their deadline and limit. A node answers
// with its own resources only (creator == itself), never with what partners
// shared with it.
package search
