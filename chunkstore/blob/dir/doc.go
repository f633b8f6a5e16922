// Package dir is a blob.Store in a local directory. An object is a file
// at DIR/NAME (slashes in the name are subdirectories). Put writes a
// temporary file under DIR/.tmp, fsyncs it, and link(2)s it to its name,
// which fails when the name exists: create-only and atomic, so a reader
// never sees a partial object and a killed writer leaves only a
// temporary file (removed by the next Open after an hour). The parent
// directory is fsynced before Put returns.
package dir
