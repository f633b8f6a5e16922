package main

import "testing"

func TestParseIngestShapes(t *testing.T) {
	summary := []byte(`[{"image":"a.qcow2","id":"aa","allocated_bytes":10,"read_bytes":7,"new_bytes":3,"how":"overlay"},
{"image":"b.qcow2","id":"bb","read_bytes":0,"new_bytes":0,"how":"unchanged"}]`)
	records := []byte(`[{"engram":"cc","stats":{"data_bytes":9,"new_bytes":4}}]`)
	for _, tc := range []struct {
		name       string
		in         []byte
		id         string
		read, news int64
		n          int
	}{
		{"summary", summary, "aa", 7, 3, 2},
		{"records", records, "cc", 9, 4, 1},
	} {
		recs, err := parseIngest(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(recs) != tc.n || recs[0].ID != tc.id || *recs[0].ReadBytes != tc.read || recs[0].NewBytes != tc.news {
			t.Errorf("%s: got %d records, first %+v (read %d)", tc.name, len(recs), recs[0], *recs[0].ReadBytes)
		}
	}
	for _, bad := range []string{``, `[]`, `{"id":"x"}`, `[{"how":"full"}]`} {
		if _, err := parseIngest([]byte(bad)); err == nil {
			t.Errorf("parseIngest(%q): no error", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{5}, 5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
