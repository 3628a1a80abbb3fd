//! What every public service and the job runner share.

use std::sync::Arc;

use osa_runtime::ServiceError;
use tonic::Request;

use crate::{
    Settings,
    blobs::Blobs,
    keys::Tenant,
    stages::Stages,
    store::{avatars::Avatars, jobs::Jobs, sessions::SessionSlots},
    webhook::Webhooks,
};

/// Handles to the stages, Redis and the object store. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<Settings>,
    pub stages: Stages,
    pub avatars: Avatars,
    pub jobs: Jobs,
    pub sessions: SessionSlots,
    pub blobs: Blobs,
    pub webhooks: Webhooks,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The tenant the authentication layer resolved for `request`.
pub fn tenant<T>(request: &Request<T>) -> Result<String, ServiceError> {
    request
        .extensions()
        .get::<Tenant>()
        .map(|t| t.0.clone())
        .ok_or_else(|| ServiceError::Unauthenticated("no API key was checked for this call".into()))
}
