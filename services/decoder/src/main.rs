//! `osa-decoder`: see the crate docs.

fn main() -> std::process::ExitCode {
    osa_runtime::app::main("osa-decoder", osa_decoder::run)
}
