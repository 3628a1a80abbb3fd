//! `osa render --server URL`: the same render as the embedded mode, done by a
//! running gateway through [`osa_client`]: upload the portrait as an avatar,
//! submit the audio as a job, follow its progress, download the MP4.
//!
//! Exit status: 0 on success; 2 for usage errors and inputs the server
//! rejects (INVALID_ARGUMENT, also as a job's failure code); 130 after
//! Ctrl-C (the job is cancelled on the server); 1 for everything else.

use std::{
    path::Path,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Instant,
};

use indicatif::{ProgressBar, ProgressStyle};
use osa_client::{Client, Code, Error, RenderOptions, code_name, v1};

/// What `osa render` passes on when `--server` is given.
#[derive(Debug)]
pub struct Remote<'a> {
    /// Gateway URL (`http://HOST:PORT` or `https://...`).
    pub server: &'a str,
    /// API key (`--api-key` or `OSA_API_KEY`).
    pub api_key: Option<&'a str>,
    pub image: &'a Path,
    pub audio: &'a Path,
    pub out: &'a Path,
    pub fps: u32,
    /// Sampling steps (`--quality`).
    pub quality: u32,
    /// Noise seed; 0 lets the server pick one (reported at the end).
    pub seed: u64,
    pub bitrate_kbps: Option<u32>,
}

pub fn run(args: &Remote<'_>) -> anyhow::Result<ExitCode> {
    for (what, path) in [("--image", args.image), ("--audio", args.audio)] {
        if !path.is_file() {
            return super::usage("render", format!("{what} {}: no such file", path.display()));
        }
    }
    if args.api_key.is_none_or(|k| k.trim().is_empty()) {
        eprintln!(
            "osa render: note: no --api-key (or OSA_API_KEY): the gateway will refuse the calls"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(render(args))
}

async fn render(args: &Remote<'_>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let client = match Client::connect(args.server, args.api_key).await {
        Ok(c) => c,
        Err(e) => return Ok(report(&e)),
    };
    let info = match client.server_info().await {
        Ok(i) => i,
        Err(e) => return Ok(report(&e)),
    };
    // The server's own lists are the truth; checking here turns a bad flag
    // into a usage error before anything is uploaded.
    if !info.supported_fps.is_empty() && !info.supported_fps.contains(&args.fps) {
        let msg =
            format!("--fps {} is not one of {:?} (the server's)", args.fps, info.supported_fps);
        return super::usage("render", msg);
    }
    if !info.supported_steps.is_empty() && !info.supported_steps.contains(&args.quality) {
        let msg = format!(
            "--quality {} is not one of {:?} (the server's)",
            args.quality, info.supported_steps
        );
        return super::usage("render", msg);
    }
    if info.model.as_ref().is_some_and(|m| m.random_weights) {
        eprintln!("osa render: note: the server runs random weights: no real face comes out");
    }

    let avatar = match client.create_avatar_from_file(args.image).await {
        Ok(a) => a,
        Err(e) => return Ok(report(&e)),
    };
    if avatar.faces_found > 1 {
        eprintln!("osa render: {} faces found; animating the largest", avatar.faces_found);
    }

    let opts = RenderOptions {
        fps: args.fps,
        steps: args.quality,
        seed: Some(args.seed),
        encoding: args.bitrate_kbps.map(|bitrate_kbps| v1::VideoEncoding { bitrate_kbps }),
        ..RenderOptions::default()
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} clip {pos}/{len} [{bar:30}] {elapsed} (eta {eta}) {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    // The job's id, once known, so Ctrl-C can cancel it.
    let job_id = Arc::new(Mutex::new(None::<String>));
    let progress = {
        let (bar, job_id) = (bar.clone(), job_id.clone());
        move |job: &v1::Job| {
            job_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| job.job_id.clone());
            if let Some(p) = &job.progress {
                bar.set_length(p.clips_total);
                bar.set_position(p.clips_done);
            }
            bar.set_message(state_name(job.state()));
        }
    };
    let result = tokio::select! {
        r = client.render_file(&avatar.avatar_id, args.audio, args.out, opts, progress) => r,
        _ = tokio::signal::ctrl_c() => {
            bar.finish_and_clear();
            let id = job_id.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(id) = id {
                match client.cancel_job(&id).await {
                    Ok(_) => eprintln!("osa render: interrupted: job {id} cancelled"),
                    Err(e) => eprintln!("osa render: interrupted; cancelling job {id}: {e}"),
                }
            }
            delete_avatar(&client, &avatar.avatar_id).await;
            return Ok(ExitCode::from(130));
        }
    };
    bar.finish_and_clear();
    // The avatar was made for this render only; the job keeps its own copy.
    delete_avatar(&client, &avatar.avatar_id).await;
    let job = match result {
        Ok(job) => job,
        Err(e) => return Ok(report(&e)),
    };

    let (seconds, clips) =
        job.progress.as_ref().map_or((0.0, 0), |p| (p.media_seconds_total, p.clips_total));
    let seed = job.sampling.map_or(args.seed, |s| s.seed);
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "osa render: job {} on {}: {seconds:.2} s at {} fps ({clips} clips), seed {seed}, \
         {} bytes in {took:.1} s -> {}",
        job.job_id,
        args.server,
        job.fps,
        job.result_bytes,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Best effort: a leftover avatar is harmless, so a failure is only noted.
async fn delete_avatar(client: &Client, avatar_id: &str) {
    if let Err(e) = client.delete_avatar(avatar_id).await {
        eprintln!("osa render: note: could not delete the temporary avatar {avatar_id}: {e}");
    }
}

fn state_name(state: v1::JobState) -> &'static str {
    match state {
        v1::JobState::Unspecified => "",
        v1::JobState::Queued => "queued",
        v1::JobState::Running => "running",
        v1::JobState::Succeeded => "succeeded",
        v1::JobState::Failed => "failed",
        v1::JobState::Cancelled => "cancelled",
    }
}

/// Prints the error with its gRPC code and returns the exit status: 2 when
/// the input was at fault, 1 otherwise.
fn report(e: &Error) -> ExitCode {
    match e {
        Error::Status { code, message, retry_after } => {
            let retry = retry_after
                .map(|d| format!(" (retry after {:.1} s)", d.as_secs_f64()))
                .unwrap_or_default();
            eprintln!("osa render: {}: {message}{retry}", code_name(*code));
            if *code == Code::InvalidArgument {
                return ExitCode::from(2);
            }
        }
        Error::JobFailed { code, reason } => {
            eprintln!("osa render: the job failed: {code}: {reason}");
            if code == code_name(Code::InvalidArgument) {
                return ExitCode::from(2);
            }
        }
        other => eprintln!("osa render: {other}"),
    }
    ExitCode::FAILURE
}
