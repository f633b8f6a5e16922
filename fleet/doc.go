// Package fleet is the store-wide view of how engrams relate, built on their
// signatures (package sketch) and confirmed with their manifests:
//
//   - Similar ranks every other engram by estimated shared bytes with one
//     (two-stage signature scan), optionally re-scored exactly.
//   - Lineage finds an engram's parent: the overlay record when the chain
//     was ingested, otherwise the engram most contained in it with clearly
//     asymmetric containment, confirmed from the manifests; near-ties are
//     reported as ambiguous, not guessed. Tree groups the store into
//     families.
//   - PlanThin chooses, for a set of engrams, which member each one should
//     be restored as a thin qcow2 overlay on: the one sharing the most
//     content at the same guest offsets, measured exactly by manifest diff
//     (the signature only shortlists: shared content is not shared
//     position). WriteThin writes the plan.
//
// Invariants: a signature never decides alone what gets written; every
// figure called exact comes from the manifests; a plan is a forest (no
// member backs itself through others) of bounded depth.
package fleet
