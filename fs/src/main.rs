//! The `domfs` command: a thin shell over [`domfs::cli`].

fn main() -> std::process::ExitCode {
    domfs::cli::main()
}
