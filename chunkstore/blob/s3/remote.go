package s3

// Remote says every request waits a network round trip: the chunk store
// then asks its readers for more reads in flight than a local disk needs
// (chunkstore.ReadParallelism).
func (s *Store) Remote() bool { return true }
