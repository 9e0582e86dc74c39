//! registry: see ARCHITECTURE.md.
