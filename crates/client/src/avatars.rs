//! Avatars: upload a portrait once, animate it in many jobs and sessions.

use std::path::Path;

use crate::{Client, Error, v1};

/// Most pages [`Client::list_avatars`] and [`Client::list_jobs`] follow: a
/// server that keeps handing out tokens cannot make a listing endless.
pub(crate) const MAX_PAGES: usize = 10_000;

impl Client {
    /// Uploads a portrait (JPEG, PNG or WebP bytes) and waits until the
    /// server has prepared it. Not retried: a retry could create a second
    /// avatar.
    pub async fn create_avatar(
        &self,
        image: Vec<u8>,
        display_name: &str,
    ) -> Result<v1::Avatar, Error> {
        self.check_upload("the image", image.len())?;
        let request = v1::CreateAvatarRequest { image, display_name: display_name.to_owned() };
        Ok(self.avatars.clone().create_avatar(request).await?.into_inner())
    }

    /// Uploads the portrait in the file at `path`, named after the file.
    pub async fn create_avatar_from_file(&self, path: &Path) -> Result<v1::Avatar, Error> {
        let image = tokio::fs::read(path).await.map_err(|e| Error::io(path, e))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // The API allows 200 characters of name; a longer file name should
        // not make an upload fail.
        let name: String = name.chars().take(200).collect();
        self.create_avatar(image, &name).await
    }

    /// One avatar.
    pub async fn get_avatar(&self, avatar_id: &str) -> Result<v1::Avatar, Error> {
        let request = v1::GetAvatarRequest { avatar_id: avatar_id.to_owned() };
        self.retrying("GetAvatar", || {
            let (mut c, r) = (self.avatars.clone(), request.clone());
            async move { c.get_avatar(r).await }
        })
        .await
    }

    /// One page of the caller's avatars, newest first (`page_size` 0 means
    /// the server's default; `page_token` empty for the first page).
    pub async fn list_avatars_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<v1::ListAvatarsResponse, Error> {
        let request = v1::ListAvatarsRequest { page_size, page_token: page_token.to_owned() };
        self.retrying("ListAvatars", || {
            let (mut c, r) = (self.avatars.clone(), request.clone());
            async move { c.list_avatars(r).await }
        })
        .await
    }

    /// All of the caller's avatars, newest first, following every page.
    pub async fn list_avatars(&self) -> Result<Vec<v1::Avatar>, Error> {
        let mut all = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self.list_avatars_page(0, &token).await?;
            all.extend(page.avatars);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            if page.next_page_token == token {
                return Err(Error::Protocol(
                    "ListAvatars returned the same page token twice".into(),
                ));
            }
            token = page.next_page_token;
        }
        Err(Error::Protocol(format!("ListAvatars did not end after {MAX_PAGES} pages")))
    }

    /// Deletes an avatar. Not retried: a repeat after a lost answer would
    /// report NOT_FOUND for a delete that worked.
    pub async fn delete_avatar(&self, avatar_id: &str) -> Result<(), Error> {
        let request = v1::DeleteAvatarRequest { avatar_id: avatar_id.to_owned() };
        self.avatars.clone().delete_avatar(request).await?;
        Ok(())
    }
}
