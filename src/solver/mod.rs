//! solver: see ARCHITECTURE.md.
