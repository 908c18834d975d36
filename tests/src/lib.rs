//! End-to-end tests that span several binaries (domfs, domfs-agent, domfs-ttp) live here.
//! Tests of one binary live in that binary's package (`fs/tests/`), where cargo can name
//! its executable.
#![forbid(unsafe_code)]
