//! Our JSON: a strict RFC 8259 reader and a writer.
