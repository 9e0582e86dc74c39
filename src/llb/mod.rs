//! llb: see ARCHITECTURE.md.
