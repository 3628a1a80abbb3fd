//! Fuzz-style robustness: random bytes, truncated prefixes and bit flips of
//! real files never panic and never hang. Each decode runs on its own thread
//! under a deadline.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use osa_audio::{DecodeLimits, decode_file};

/// Generous for debug builds; a healthy decode of these files takes well
/// under a second.
const DEADLINE: Duration = Duration::from_secs(60);

fn decode_with_deadline(label: String, bytes: Vec<u8>, hint: Option<&'static str>) {
    let (tx, rx) = mpsc::channel();
    let l = label.clone();
    let handle = std::thread::spawn(move || {
        let result = decode_file(&bytes, hint, &DecodeLimits::default());
        // Every error must render to a message.
        if let Err(e) = &result {
            assert!(!e.to_string().is_empty(), "{l}: empty message");
        }
        let _ = tx.send(result.is_ok());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(_) => handle.join().unwrap_or_else(|_| panic!("{label}: panicked")),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{label}: no result after {DEADLINE:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{label}: panicked"),
    }
}

/// Counts panics that `decode_file` caught inside decoders (reported, not
/// failed: the API turns them into errors).
fn count_caught_panics() -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        c.fetch_add(1, Ordering::Relaxed);
        default(info);
    }));
    count
}

#[test]
fn random_bytes() {
    let mut rng = common::Rng(0xdead_beef_cafe_f00d);
    let prefixes: [&[u8]; 7] = [
        b"",
        b"RIFF\x24\0\0\0WAVEfmt ",
        b"OggS\0\x02",
        b"fLaC",
        b"ID3\x04\0",
        b"\0\0\0\x20ftypM4A ",
        b"\xff\xfb\x90\x64",
    ];
    for i in 0..350 {
        let prefix = prefixes[i % prefixes.len()];
        let len = rng.below(if i % 2 == 0 { 64 } else { 20_000 });
        let mut bytes = prefix.to_vec();
        bytes.extend((0..len).map(|_| rng.next() as u8));
        decode_with_deadline(format!("random #{i} ({} bytes)", bytes.len()), bytes, None);
    }
}

const FILES: [&str; 12] = [
    "ref16k.wav",
    "w44k_st_f32.wav",
    "f44k_st.flac",
    "m44k_st.mp3",
    "v44k_st.ogg",
    "o48k_st.opus",
    "a44k_st.m4a",
    "a48k_noedit.m4a",
    "o48k_51.opus",
    "o48k.webm",
    "a44k.aac",
    "m44k_noxing.mp3",
];

#[test]
fn truncated_prefixes_of_real_files() {
    let fixtures = common::fixtures();
    for name in FILES {
        let fx = fixtures.files.iter().find(|f| f.name == name).unwrap();
        let n = fx.bytes.len();
        let cuts = [1, 4, 12, 44, 100, 1000, n / 10, n / 3, n / 2, n - 1];
        for cut in cuts {
            let bytes = fx.bytes[..cut.min(n)].to_vec();
            decode_with_deadline(format!("{name} cut at {cut}"), bytes, None);
        }
    }
}

#[test]
fn bit_flips_in_real_files() {
    let caught = count_caught_panics();
    let fixtures = common::fixtures();
    let mut rng = common::Rng(0x0123_4567_89ab_cdef);
    for name in FILES {
        let fx = fixtures.files.iter().find(|f| f.name == name).unwrap();
        for round in 0..20 {
            let mut bytes = fx.bytes.clone();
            // Early rounds hit the headers, later ones anywhere.
            let span = if round < 3 { bytes.len().min(512) } else { bytes.len() };
            for _ in 0..(1 + round * 2) {
                let at = rng.below(span);
                bytes[at] ^= 1 << rng.below(8);
            }
            decode_with_deadline(format!("{name} flips round {round}"), bytes, None);
        }
    }
    println!("decoder panics caught and turned into errors: {}", caught.load(Ordering::Relaxed));
}
