//! VFS driver (being written).
