//! progress: see ARCHITECTURE.md.
