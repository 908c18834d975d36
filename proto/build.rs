//! Compiles the .proto files with protox (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/domfs/ttp/v1/ttp.proto",
        "proto/domfs/ttp/v1/admin.proto",
        "proto/domfs/agent/v1/agent.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
