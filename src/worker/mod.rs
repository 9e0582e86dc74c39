//! worker: see ARCHITECTURE.md.
