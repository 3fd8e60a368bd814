// Peer figure for benches/message.rs: the same decode, encode and relay work done the way
// KubeEdge does it, with Go's encoding/json and a struct shaped like beehive's model.Message
// (content as interface{}, so a received object becomes a map).
//
// Run: go run main.go ../../tests/vectors/ws-v1.22.2.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"testing"
)

type header struct {
	ID              string `json:"msg_id"`
	ParentID        string `json:"parent_msg_id,omitempty"`
	Timestamp       int64  `json:"timestamp"`
	ResourceVersion string `json:"resourceversion,omitempty"`
	Sync            bool   `json:"sync,omitempty"`
	MessageType     string `json:"type,omitempty"`
}

type route struct {
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination,omitempty"`
	Group       string `json:"group,omitempty"`
	Operation   string `json:"operation,omitempty"`
	Resource    string `json:"resource,omitempty"`
}

type message struct {
	Header  header      `json:"header"`
	Router  route       `json:"route,omitempty"`
	Content interface{} `json:"content"`
}

type record struct {
	Seq     int    `json:"seq"`
	Kind    string `json:"kind"`
	Payload string `json:"payload"`
}

func captured(path string, seq int) []byte {
	f, err := os.Open(path)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			panic(err)
		}
		if r.Seq == seq {
			p := []byte(r.Payload)
			return p[:len(p)-1] // without the trailing newline
		}
	}
	panic("seq not found")
}

func report(name, what string, size int, r testing.BenchmarkResult) {
	ns := float64(r.T.Nanoseconds()) / float64(r.N)
	fmt.Printf("%-10s %-7s %9.1f ns/op %8.1f MiB/s %6d B/op %4d allocs/op\n",
		name, what, ns, float64(size)/ns*1e9/(1<<20), r.AllocedBytesPerOp(), r.AllocsPerOp())
}

func main() {
	path := os.Args[1]
	for _, c := range []struct {
		name string
		seq  int
	}{{"pod_insert", 13}, {"keepalive", 7}} {
		wire := captured(path, c.seq)
		var m message
		if err := json.Unmarshal(wire, &m); err != nil {
			panic(err)
		}
		report(c.name, "decode", len(wire), testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				var m message
				if err := json.Unmarshal(wire, &m); err != nil {
					panic(err)
				}
			}
		}))
		report(c.name, "encode", len(wire), testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := json.Marshal(&m); err != nil {
					panic(err)
				}
			}
		}))
		report(c.name, "relay", len(wire), testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				var m message
				if err := json.Unmarshal(wire, &m); err != nil {
					panic(err)
				}
				if _, err := json.Marshal(&m); err != nil {
					panic(err)
				}
			}
		}))
	}
}
