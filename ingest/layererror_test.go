package ingest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/engram-vm/engram/qcow2"
)

// A LayerError names its file once, whatever the cause, and unwraps.
func TestLayerErrorNamesPathOnce(t *testing.T) {
	q := &qcow2.Error{Path: "vm.qcow2", Msg: "L2 entry for guest offset 0x0 (0x2): reserved bits set", Err: qcow2.ErrCorrupt}
	for _, c := range []struct {
		err  *LayerError
		want string
		is   error
	}{
		{&LayerError{Path: "vm.qcow2", Err: q}, "vm.qcow2: L2 entry for guest offset 0x0 (0x2): reserved bits set", qcow2.ErrCorrupt},
		{&LayerError{Path: "vm.qcow2", Err: fmt.Errorf("read guest 0x0+0x1000: %w", q)}, "read guest 0x0+0x1000: vm.qcow2: L2 entry for guest offset 0x0 (0x2): reserved bits set", qcow2.ErrCorrupt},
		{&LayerError{Path: "top.qcow2", Err: q}, "top.qcow2: vm.qcow2: L2 entry for guest offset 0x0 (0x2): reserved bits set", qcow2.ErrCorrupt},
		{&LayerError{Path: "vm.qcow2", Op: "commit", Err: context.Canceled}, "vm.qcow2: commit: context canceled", context.Canceled},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
		if !errors.Is(c.err, c.is) {
			t.Errorf("%v: errors.Is %v is false", c.err, c.is)
		}
	}
}
