//! Generated protobuf code for BuildKit's wire format (see proto/).
