// An app that creates resources with retries that cannot apply twice, and
// follows the change log of its node from a cursor it keeps.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"
)

type reply struct {
	OK    bool `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	ID      string `json:"id"`
	Version uint64 `json:"version"`
}

// propagate sends one request and retries it with the same key while the
// node is unavailable or does not answer.
func propagate(nc *nats.Conn, key string, body any) (reply, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return reply{}, err
	}
	msg := &nats.Msg{Subject: "ferry.propagate", Data: data, Header: nats.Header{}}
	msg.Header.Set("Nats-Msg-Id", key)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		m, err := nc.RequestMsg(msg, 10*time.Second)
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) {
			time.Sleep(wait)
			continue
		}
		if err != nil {
			return reply{}, err
		}
		var r reply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return reply{}, err
		}
		if !r.OK && r.Error.Code == "unavailable" {
			time.Sleep(wait)
			continue
		}
		if !r.OK {
			return r, fmt.Errorf("%s: %s", r.Error.Code, r.Error.Message)
		}
		return r, nil
	}
}

func main() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	r, err := propagate(nc, "create-vm1", map[string]any{
		"action": "create", "data_type": "vm", "payload": map[string]any{"id": "vm1", "cpu": 2}})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%s is on disk as version %d", r.ID, r.Version)

	// Follow the change log: every change this node holds, in order.
	var since uint64 // keep it durably in a real app
	for {
		m, err := nc.Request("ferry.changes", fmt.Appendf(nil, `{"since":%d,"limit":1000}`, since), 10*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		var page struct {
			OK      bool `json:"ok"`
			Changes []struct {
				Version  uint64          `json:"version"`
				Origin   string          `json:"origin"`
				Kind     string          `json:"kind"`
				DataType string          `json:"data_type"`
				Payload  json.RawMessage `json:"payload"`
			} `json:"changes"`
			Next uint64 `json:"next"`
			More bool   `json:"more"`
		}
		if err := json.Unmarshal(m.Data, &page); err != nil || !page.OK {
			log.Fatalf("changes: %s", m.Data)
		}
		for _, c := range page.Changes {
			log.Printf("%d %s %s from %s: %s", c.Version, c.Kind, c.DataType, c.Origin, c.Payload)
		}
		since = page.Next
		if !page.More {
			time.Sleep(time.Second) // or wake on an event
		}
	}
}
