//! `osa.v1.AvatarService`: upload, prepare (on a generator replica), list
//! and delete reference portraits. Every call is scoped to the caller's
//! tenant; another tenant's avatar answers NOT_FOUND.

use bytes::Bytes;
use osa_proto::v1::{
    Avatar, CreateAvatarRequest, DeleteAvatarRequest, DeleteAvatarResponse, GetAvatarRequest,
    ListAvatarsRequest, ListAvatarsResponse, PrepareReferenceRequest,
    avatar_service_server::AvatarService,
};
use osa_runtime::ServiceError;
use tonic::{Request, Response, Status};

use crate::{
    keys_layout,
    state::{Shared, tenant},
    store::avatars::AvatarRecord,
};

/// The AvatarService implementation.
#[derive(Debug, Clone)]
pub struct Avatars {
    shared: Shared,
}

impl Avatars {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

/// Checks an uploaded image's size, format and dimensions from its header
/// alone, before any stage sees it.
pub fn check_image(
    image: &[u8],
    max_bytes: u64,
    max_side: u32,
) -> Result<(u32, u32), ServiceError> {
    if image.is_empty() {
        return Err(ServiceError::invalid("image", "is empty"));
    }
    if image.len() as u64 > max_bytes {
        return Err(ServiceError::invalid(
            "image",
            format!("{} bytes is over the {max_bytes}-byte limit", image.len()),
        ));
    }
    let kind = imagesize::image_type(image)
        .map_err(|_| ServiceError::invalid("image", "not a JPEG, PNG or WebP image"))?;
    if !matches!(
        kind,
        imagesize::ImageType::Jpeg | imagesize::ImageType::Png | imagesize::ImageType::Webp
    ) {
        return Err(ServiceError::invalid("image", format!("{kind:?} is not JPEG, PNG or WebP")));
    }
    let size = imagesize::blob_size(image)
        .map_err(|e| ServiceError::invalid("image", format!("unreadable header: {e}")))?;
    let (w, h) = (size.width as u64, size.height as u64);
    if w == 0 || h == 0 || w > max_side as u64 || h > max_side as u64 {
        return Err(ServiceError::invalid(
            "image",
            format!("{w}x{h} pixels is outside 1..={max_side} on each side"),
        ));
    }
    Ok((w as u32, h as u32))
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

#[tonic::async_trait]
impl AvatarService for Avatars {
    async fn create_avatar(
        &self,
        request: Request<CreateAvatarRequest>,
    ) -> Result<Response<Avatar>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let g = &self.shared.settings.gateway;
        if req.display_name.chars().count() > 200 {
            return Err(
                ServiceError::invalid("display_name", "is longer than 200 characters").into()
            );
        }
        check_image(&req.image, g.max_image_bytes, g.max_image_side)?;
        let avatar_id = uuid::Uuid::now_v7().to_string();
        let image_key = keys_layout::avatar_image_key(&tenant, &avatar_id);
        let generator_id = keys_layout::generator_avatar_id(&tenant, &avatar_id);
        let image = Bytes::from(req.image);
        self.shared.blobs.put(&image_key, image.clone()).await.map_err(ServiceError::from)?;
        let prepared = self
            .shared
            .stages
            .generator
            .clone()
            .prepare_reference(PrepareReferenceRequest {
                avatar_id: generator_id.clone(),
                image: image.to_vec(),
            })
            .await;
        let prepared = match prepared {
            Ok(p) => p.into_inner(),
            Err(status) => {
                // Nothing half-written: the upload goes with the failure.
                let _ = self.shared.blobs.delete(&image_key).await;
                return Err(status);
            }
        };
        let avatar = Avatar {
            avatar_id: avatar_id.clone(),
            display_name: req.display_name,
            image_width: prepared.image_width,
            image_height: prepared.image_height,
            face: prepared.face,
            faces_found: prepared.faces_found,
            crop: prepared.crop,
            created_at: Some(now()),
        };
        let record =
            AvatarRecord { avatar: avatar.clone(), image_key: image_key.clone(), generator_id };
        if let Err(e) = self.shared.avatars.insert(&tenant, &record).await {
            let _ = self.shared.blobs.delete(&image_key).await;
            return Err(ServiceError::from(e).into());
        }
        metrics::counter!("osa_gateway_avatars_created_total").increment(1);
        tracing::info!(%tenant, avatar = %avatar_id, faces = avatar.faces_found, "avatar created");
        Ok(Response::new(avatar))
    }

    async fn get_avatar(
        &self,
        request: Request<GetAvatarRequest>,
    ) -> Result<Response<Avatar>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().avatar_id;
        let record = self.shared.avatars.get(&tenant, &id).await.map_err(ServiceError::from)?;
        let record = record.ok_or(ServiceError::NotFound { kind: "avatar", id })?;
        Ok(Response::new(record.avatar))
    }

    async fn list_avatars(
        &self,
        request: Request<ListAvatarsRequest>,
    ) -> Result<Response<ListAvatarsResponse>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let (avatars, next_page_token) = self
            .shared
            .avatars
            .list(&tenant, req.page_size, &req.page_token)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(ListAvatarsResponse { avatars, next_page_token }))
    }

    async fn delete_avatar(
        &self,
        request: Request<DeleteAvatarRequest>,
    ) -> Result<Response<DeleteAvatarResponse>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().avatar_id;
        let record = self.shared.avatars.delete(&tenant, &id).await.map_err(ServiceError::from)?;
        let record = record.ok_or(ServiceError::NotFound { kind: "avatar", id })?;
        if let Err(e) = self.shared.blobs.delete(&record.image_key).await {
            tracing::warn!(error = %e, key = %record.image_key, "could not delete an avatar's image");
        }
        Ok(Response::new(DeleteAvatarResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_checked_from_their_header() {
        // A 1x1 PNG.
        let png: &[u8] = &[
            0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0,
            0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 0x90, 0x77, 0x53, 0xde,
        ];
        assert_eq!(check_image(png, 1000, 10).unwrap(), (1, 1));
        let e = check_image(png, 10, 10).unwrap_err().to_string();
        assert!(e.contains("byte limit"), "{e}");
        let e = check_image(b"GIF89a......", 1000, 10).unwrap_err().to_string();
        assert!(e.contains("image"), "{e}");
        let e = check_image(b"", 1000, 10).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = check_image(b"not an image at all", 1000, 10).unwrap_err().to_string();
        assert!(e.contains("not a JPEG"), "{e}");
    }
}
