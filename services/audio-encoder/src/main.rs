//! `osa-audio-encoder`: see the crate docs.

fn main() -> std::process::ExitCode {
    osa_runtime::app::main("osa-audio-encoder", osa_audio_encoder::run)
}
