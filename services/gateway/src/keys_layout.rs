//! Where the gateway keeps things in the object store, and the ids it gives
//! the generator. One place, so a layout change is one edit.

/// The id the generator caches a tenant's avatar under. Tenants are
/// `[A-Za-z0-9._-]{1,64}` and avatar ids UUIDs, so this is unique and within
/// the generator's 128-character id limit.
pub fn generator_avatar_id(tenant: &str, avatar_id: &str) -> String {
    format!("{tenant}.{avatar_id}")
}

/// The uploaded portrait of an avatar.
pub fn avatar_image_key(tenant: &str, avatar_id: &str) -> String {
    format!("avatars/{tenant}/{avatar_id}/image")
}

/// Everything a job keeps while it runs (deleted when it ends).
pub fn job_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/")
}

/// The uploaded audio of a job.
pub fn audio_key(job_id: &str) -> String {
    format!("{}audio", job_prefix(job_id))
}

/// The saved latents of clip `index` of a job (a `GeneratedClip` message).
pub fn clip_key(job_id: &str, index: u64) -> String {
    format!("{}clips/{index:08}", job_prefix(job_id))
}

/// The finished MP4 of a job.
pub fn result_key(job_id: &str) -> String {
    format!("results/{job_id}.mp4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_share_the_prefix_the_runner_deletes_and_results_do_not() {
        let p = job_prefix("j1");
        assert!(audio_key("j1").starts_with(&p));
        assert!(clip_key("j1", 3).starts_with(&p));
        assert!(!result_key("j1").starts_with(&p));
        assert_eq!(clip_key("j1", 12), "jobs/j1/clips/00000012");
    }
}
