package chunkstore

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestChunkParamsWrongType: a chunking value of the wrong JSON type is
// recorded, not fatal, and is written back as it was read.
func TestChunkParamsWrongType(t *testing.T) {
	for _, raw := range []string{
		`{"algorithm":"aligned-cdc-xxh3","align":4096,"min":16384,"avg":"65536","max":262144}`,
		`"default"`,
	} {
		var p Params
		if err := json.Unmarshal([]byte(`{"compression":"fastest","chunking":`+raw+`}`), &p); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if p.Compression != "fastest" || p.Chunking.Invalid() == nil || !strings.Contains(p.Chunking.Invalid().Error(), "chunking") {
			t.Fatalf("%s: %+v, invalid %v", raw, p, p.Chunking.Invalid())
		}
		b, err := json.Marshal(p)
		if err != nil || !strings.Contains(string(b), raw) {
			t.Fatalf("%s: marshalled as %s, %v", raw, b, err)
		}
	}
	var p ChunkParams
	if err := json.Unmarshal([]byte(`{"algorithm":"x","avg":1}`), &p); err != nil || p.Invalid() != nil || p.Avg != 1 {
		t.Fatalf("%+v %v", p, err)
	}
	if b, _ := json.Marshal(DefaultChunkParams); !strings.Contains(string(b), `"avg":65536`) {
		t.Fatalf("%s", b)
	}
}
