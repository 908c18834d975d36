//! `domfs-agent`: the host's secure component (SC in the paper). It enrolls the host's TPM
//! with the TTP and releases domain keys to local mounts. Built by the key-release issue;
//! until then it only says so.

fn main() -> std::process::ExitCode {
    eprintln!(
        "domfs-agent: not built yet (see the key-release issue); use `domfs --key-file` mode"
    );
    std::process::ExitCode::from(1)
}
