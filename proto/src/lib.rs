//! Protobuf definitions of the TTP and agent services (`domfs.ttp.v1`, `domfs.agent.v1`).
//! Empty until the key-release issue fills it in.
#![forbid(unsafe_code)]
