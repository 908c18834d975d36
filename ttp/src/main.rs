//! `domfs-ttp`: the trusted third party that derives and releases domain keys. Built by the
//! key-release issue; until then it only says so.

fn main() -> std::process::ExitCode {
    eprintln!("domfs-ttp: not built yet (see the key-release issue)");
    std::process::ExitCode::from(1)
}
