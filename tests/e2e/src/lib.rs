//! End-to-end tests of the management stack live in `tests/`; this library is empty.
//! They need the workspace binaries built first (`cargo build --workspace --bins`, which
//! scripts/test.sh does) and find them next to the test executable's profile directory.
#![forbid(unsafe_code)]
