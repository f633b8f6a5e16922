// Package nbd is a read-only server for the Network Block Device protocol
// (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle negotiation with
// NO_ZEROES, structured replies, the base:allocation metadata context, and
// requests served concurrently with replies out of order.
//
// It knows nothing of engrams: an Export is a name, a size and a function
// that opens a Device (ReadAt + Extents + Close), one per connection, so
// each connection keeps its own read-ahead state. *view.Reader satisfies
// Device as it is.
//
// Invariants, because the peer is never trusted:
//   - every length read from the wire is bounded before anything is
//     allocated for it (options 64 KiB, strings 4096 bytes, requests 32 MiB);
//     larger option data and write payloads are read and discarded, never
//     buffered;
//   - a request that is too large, out of range or of an unknown type gets
//     an error reply and the connection continues; only a broken framing
//     (bad magic, a peer that stops talking during the handshake) drops it;
//   - one connection's failure never touches another: each has its own
//     goroutines and writer lock, and read buffers come from a budget
//     shared by all connections so that memory stays bounded.
//
// Peer-supplied strings (export names) are quoted with %q before they are
// logged, so the log never carries raw control bytes.
package nbd
