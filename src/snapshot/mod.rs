//! snapshot: see ARCHITECTURE.md.
