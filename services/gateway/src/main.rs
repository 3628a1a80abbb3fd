//! `osa-gateway`: see the crate docs.

fn main() -> std::process::ExitCode {
    osa_runtime::app::main("osa-gateway", osa_gateway::run)
}
