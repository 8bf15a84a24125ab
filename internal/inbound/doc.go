// Package inbound is the kit every service uses to serve the streams peers
// open to it: Handle registers a protocol's handler with its resource
// manager service, a memory reservation, a recover and a reset on every
// error path; Refuse marks an inbound message refused before anything was
// written. It knows no protocol and holds no state.
package inbound
