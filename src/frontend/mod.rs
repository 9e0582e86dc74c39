//! frontend: see ARCHITECTURE.md.
