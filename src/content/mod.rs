//! content: see ARCHITECTURE.md.
