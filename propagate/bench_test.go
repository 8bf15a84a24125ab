package propagate

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/store"
)

type benchRoles struct{ self, partner peer.ID }

func (r benchRoles) Self() peer.ID            { return r.self }
func (r benchRoles) IsPartner(p peer.ID) bool { return p == r.partner }
func (r benchRoles) Partners() []peer.ID      { return []peer.ID{r.partner} }
func (r benchRoles) Name(peer.ID) string      { return "B" }

func (nopPub) Publish(string, any)       {}
func (nopPub) PublishRaw(string, []byte) {}

type nopPub struct{}

// BenchmarkPropagateCommit is the origin's store path alone: validate a
// create, commit it with one delivery, fsynced, 256 requests in flight.
func BenchmarkPropagateCommit(b *testing.B) {
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	self, _ := peer.IDFromPrivateKey(key)
	_, pk, _ := crypto.GenerateEd25519Key(rand.Reader)
	partner, _ := peer.IDFromPublicKey(pk)
	dir := b.TempDir()
	if d := os.Getenv("ZZDIR"); d != "" {
		dir = d
	}
	st, err := store.Open(dir, store.Options{Signer: key})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	s, err := New(Deps{Store: st, Roles: benchRoles{self, partner}, Publisher: nopPub{}})
	if err != nil {
		b.Fatal(err)
	}
	pad := make([]byte, 256-len(`{"id":"r100000","pad":""}`)) // 256-byte documents
	for i := range pad {
		pad[i] = 'x'
	}
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sem <- struct{}{}
		wg.Add(1)
		payload := json.RawMessage(fmt.Sprintf(`{"id":"r%d","pad":"%s"}`, i, pad))
		s.Propagate(context.Background(), Request{Action: "create", DataType: "vm", Payload: payload}, func(_ Result, err error) {
			if err != nil {
				b.Error(err)
			}
			<-sem
			wg.Done()
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/event")
	// What the data directory holds per change after a clean close.
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	var size int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	b.ReportMetric(float64(size)/float64(b.N), "disk-B/event")
}

// cpuTime is the process's user+system CPU time: unlike wall time it holds
// steady when other processes share the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
