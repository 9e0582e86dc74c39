//! export: see ARCHITECTURE.md.
