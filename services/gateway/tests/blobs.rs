//! Result storage on a local directory: round trips, ranged streams from an
//! offset, prefix deletes, missing keys; settings validation, and an S3 store
//! built without touching the network.

use bytes::Bytes;
use futures::TryStreamExt as _;
use osa_gateway::blobs::{BlobError, Blobs, PART_BYTES, StorageSettings};
use osa_runtime::ServiceError;

/// Deterministic, non-repeating-looking content.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
}

#[tokio::test]
async fn local_round_trip_sizes_and_missing_keys() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet is created.
    let blobs = Blobs::local(&dir.path().join("nested/store")).unwrap();
    let data = Bytes::from(content(10_000));
    blobs.put("jobs/j1/result.mp4", data.clone()).await.unwrap();
    assert_eq!(blobs.get("jobs/j1/result.mp4").await.unwrap(), Some(data));
    assert_eq!(blobs.size("jobs/j1/result.mp4").await.unwrap(), Some(10_000));
    // Replacing is whole.
    blobs.put("jobs/j1/result.mp4", Bytes::from_static(b"v2")).await.unwrap();
    assert_eq!(blobs.get("jobs/j1/result.mp4").await.unwrap().unwrap(), "v2");
    // Missing keys.
    assert_eq!(blobs.get("jobs/none/result.mp4").await.unwrap(), None);
    assert_eq!(blobs.size("jobs/none/result.mp4").await.unwrap(), None);
    blobs.delete("jobs/none/result.mp4").await.unwrap();
    let err = blobs.read_from("jobs/none/result.mp4", 0, 16).try_collect::<Vec<_>>().await;
    let err = err.unwrap_err();
    assert!(matches!(err, BlobError::NotFound(_)), "{err:?}");
    assert_eq!(ServiceError::from(err).code(), tonic::Code::NotFound);
    // Keys are the gateway's own: anything that could escape the directory is refused.
    for bad in ["../escape", "/abs", "a//b", "a b", ""] {
        let err = blobs.put(bad, Bytes::new()).await.unwrap_err();
        assert!(matches!(err, BlobError::BadKey { .. }), "{bad:?}: {err:?}");
    }
    assert!(!dir.path().join("escape").exists());
    // Deleting removes it.
    blobs.delete("jobs/j1/result.mp4").await.unwrap();
    assert_eq!(blobs.get("jobs/j1/result.mp4").await.unwrap(), None);
}

#[tokio::test]
async fn ranged_stream_from_an_offset_is_the_tail_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(dir.path()).unwrap();
    let data = content(100_003);
    blobs.put("r.mp4", Bytes::from(data.clone())).await.unwrap();
    for (offset, chunk) in [(0, 4096), (12_345, 1000), (100_000, 7), (99_999, 100_000)] {
        let pieces: Vec<Bytes> =
            blobs.read_from("r.mp4", offset, chunk).try_collect().await.unwrap();
        let (last, full) = pieces.split_last().unwrap();
        assert!(full.iter().all(|p| p.len() == chunk), "offset {offset}: uneven pieces");
        assert!(!last.is_empty() && last.len() <= chunk);
        assert_eq!(pieces.concat(), &data[offset as usize..], "offset {offset}, chunk {chunk}");
    }
    // At the end: nothing; past it: invalid "offset".
    let at_end: Vec<Bytes> = blobs.read_from("r.mp4", 100_003, 10).try_collect().await.unwrap();
    assert!(at_end.is_empty());
    let err = blobs.read_from("r.mp4", 100_004, 10).try_collect::<Vec<_>>().await.unwrap_err();
    assert!(matches!(err, BlobError::OffsetPastEnd { offset: 100_004, size: 100_003 }), "{err:?}");
    let status = tonic::Status::from(ServiceError::from(err));
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("invalid offset"), "{}", status.message());
    let err = blobs.read_from("r.mp4", 0, 0).try_collect::<Vec<_>>().await.unwrap_err();
    assert!(matches!(err, BlobError::ZeroChunk), "{err:?}");
}

#[tokio::test]
async fn put_file_streams_large_files_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(&dir.path().join("store")).unwrap();
    let small = dir.path().join("small.bin");
    std::fs::write(&small, content(5000)).unwrap();
    assert_eq!(blobs.put_file("jobs/a/small.bin", &small).await.unwrap(), 5000);
    assert_eq!(blobs.get("jobs/a/small.bin").await.unwrap().unwrap(), content(5000));
    // Over two parts: the multipart path, committed whole.
    let n = 2 * PART_BYTES + 12_345;
    let big = dir.path().join("big.bin");
    std::fs::write(&big, content(n)).unwrap();
    assert_eq!(blobs.put_file("jobs/a/big.bin", &big).await.unwrap(), n as u64);
    assert_eq!(blobs.size("jobs/a/big.bin").await.unwrap(), Some(n as u64));
    assert!(blobs.get("jobs/a/big.bin").await.unwrap().unwrap() == content(n));
    // No staging files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("store/jobs/a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    let err = blobs.put_file("jobs/a/x", &dir.path().join("missing")).await.unwrap_err();
    assert!(matches!(err, BlobError::Read { .. }), "{err:?}");
}

#[tokio::test]
async fn delete_prefix_takes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(dir.path()).unwrap();
    for key in ["jobs/a/result.mp4", "jobs/a/upload/audio.wav", "jobs/ab/result.mp4", "x.bin"] {
        blobs.put(key, Bytes::from_static(b"data")).await.unwrap();
    }
    assert_eq!(blobs.delete_prefix("jobs/a").await.unwrap(), 2);
    assert_eq!(blobs.get("jobs/a/result.mp4").await.unwrap(), None);
    assert!(blobs.get("jobs/ab/result.mp4").await.unwrap().is_some());
    assert!(blobs.get("x.bin").await.unwrap().is_some());
    assert_eq!(blobs.delete_prefix("jobs/a/").await.unwrap(), 0);
    assert_eq!(blobs.delete_prefix("nothing/here").await.unwrap(), 0);
    assert!(matches!(blobs.delete_prefix("").await, Err(BlobError::BadKey { .. })));
}

#[test]
fn settings_are_validated_with_the_setting_named() {
    let s = |url: &str| StorageSettings { url: url.into(), ..Default::default() };
    assert_eq!(StorageSettings::default().validate(), Ok(()));
    assert_eq!(s("file:///var/lib/osa").validate(), Ok(()));
    assert_eq!(s("s3://osa-results/prod/jobs").validate(), Ok(()));
    let cases = [
        (s(""), "storage.url must not be empty"),
        (s("gs://bucket"), "\"gs\" is not supported"),
        (s("file://"), "names no directory"),
        (s("s3://"), "bucket \"\""),
        (s("s3://Bad_Bucket"), "bucket \"Bad_Bucket\""),
        (s("s3://bkt/a//b"), "prefix"),
        (
            StorageSettings { s3_endpoint: Some("http://minio:9000".into()), ..s("s3://bkt") },
            "plain http",
        ),
        (StorageSettings { s3_endpoint: Some("minio:9000".into()), ..s("s3://bkt") }, "http(s)://"),
        (StorageSettings { s3_endpoint: Some("https://".into()), ..s("s3://bkt") }, "no host"),
        (StorageSettings { s3_region: Some(" ".into()), ..s("s3://bkt") }, "s3_region"),
        (
            StorageSettings { s3_region: Some("eu-west-1".into()), ..s("./data") },
            "storage.s3_region is set but storage.url is not s3://",
        ),
    ];
    for (settings, expected) in cases {
        let err = settings.validate().unwrap_err();
        assert!(err.contains(expected), "{settings:?}: {err:?} lacks {expected:?}");
        assert!(err.contains("storage."), "{err}");
        let err = Blobs::from_settings(&settings).unwrap_err();
        assert!(matches!(err, BlobError::Settings(_)), "{err:?}");
    }
    // Deserialised strictly.
    let parsed: StorageSettings = serde_json::from_str(
        r#"{"url": "s3://bkt/p", "s3_endpoint": "http://127.0.0.1:9000", "s3_allow_http": true}"#,
    )
    .unwrap();
    assert_eq!(parsed.validate(), Ok(()));
    assert!(serde_json::from_str::<StorageSettings>(r#"{"bucket": "x"}"#).is_err());
}

#[tokio::test]
async fn an_s3_store_is_built_offline_and_a_dead_endpoint_is_unavailable() {
    // A loopback port nothing listens on: no network is involved.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = StorageSettings {
        url: "s3://osa-results/prod".into(),
        s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
        s3_region: Some("us-east-1".into()),
        s3_allow_http: true,
    };
    let blobs = Blobs::from_settings(&settings).unwrap();
    assert_eq!(blobs.to_string(), "s3://osa-results/prod");
    assert!(format!("{blobs:?}").contains("s3://osa-results/prod"));
    assert!(matches!(blobs.put("../x", Bytes::new()).await, Err(BlobError::BadKey { .. })));
    let started = std::time::Instant::now();
    let err = blobs.size("jobs/a/result.mp4").await.unwrap_err();
    assert!(matches!(err, BlobError::Backend(_)), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
    let status = tonic::Status::from(ServiceError::from(err));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().starts_with("object store unavailable"), "{}", status.message());
}
