//! meta: see ARCHITECTURE.md.
