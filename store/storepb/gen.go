// Package storepb holds the protobuf records the store keeps on disk.
package storepb

//go:generate protoc --go_out=. --go_opt=paths=source_relative records.proto
