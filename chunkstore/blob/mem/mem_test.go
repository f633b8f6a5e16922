package mem_test

import (
	"testing"

	"github.com/engram-vm/engram/chunkstore/blob"
	"github.com/engram-vm/engram/chunkstore/blob/blobtest"
	"github.com/engram-vm/engram/chunkstore/blob/mem"
)

func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store { return mem.New() }, blobtest.Options{})
}
