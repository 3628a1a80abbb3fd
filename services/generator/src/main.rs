//! `osa-generator`: see the crate docs.

fn main() -> std::process::ExitCode {
    osa_runtime::app::main("osa-generator", osa_generator::run)
}
