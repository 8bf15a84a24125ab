// Package pb holds the protobuf wire messages of the Ferry peer protocols.
package pb

//go:generate protoc --go_out=. --go_opt=paths=source_relative ferry.proto
