//! The live path: random chunk sizes give exactly the samples of the whole
//! buffer, in order, with the right running counts.

mod common;

use osa_audio::{AudioError, PcmAssembler, PcmAssemblerConfig};

#[test]
fn random_chunking_equals_whole_buffer() {
    let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15);
    let samples: Vec<i16> = (0..48_000).map(|_| rng.next() as i16).collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let whole: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();

    for seed in 1..=20u64 {
        let mut rng = common::Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut asm = PcmAssembler::new(PcmAssemblerConfig::default());
        let mut out = Vec::new();
        let mut pos = 0;
        let mut chunks = 0u64;
        while pos < bytes.len() {
            // 0 to ~2.5 s per chunk, always whole samples.
            let len = (2 * rng.below(40_000)).min(bytes.len() - pos);
            asm.push(&bytes[pos..pos + len]).unwrap();
            pos += len;
            chunks += 1;
            assert_eq!(asm.total_samples(), (pos / 2) as u64);
            // The consumer takes irregular amounts.
            let take = rng.below(30_000);
            asm.drain_into(&mut out, take);
            assert_eq!(asm.consumed_samples(), out.len() as u64);
        }
        out.extend(asm.take_all());
        assert_eq!(out, whole, "seed {seed}");
        assert_eq!(asm.chunks(), chunks);
        assert_eq!(asm.total_duration(), std::time::Duration::from_secs(3));
    }
}

#[test]
fn odd_chunk_is_refused_and_the_stream_continues() {
    let mut asm = PcmAssembler::new(PcmAssemblerConfig::default());
    asm.push(&[0, 0, 0, 0]).unwrap();
    let err = asm.push(&[1, 2, 3, 4, 5]).unwrap_err();
    assert_eq!(err, AudioError::PartialSample { chunk_index: 1, len: 5 });
    assert!(err.is_invalid_input());
    assert_eq!(asm.total_samples(), 2);
    asm.push(&[0, 64]).unwrap();
    assert_eq!(asm.take_all(), vec![0.0, 0.0, 0.5]);
}

#[test]
fn lagging_consumer_hits_the_bound() {
    let cfg = PcmAssemblerConfig { max_buffered_samples: 16_000, max_total: None };
    let mut asm = PcmAssembler::new(cfg);
    let chunk = vec![0u8; 640]; // 20 ms
    let mut accepted = 0;
    let err = loop {
        match asm.push(&chunk) {
            Ok(n) => accepted += n,
            Err(e) => break e,
        }
    };
    assert_eq!(accepted, 16_000);
    assert!(matches!(err, AudioError::BufferFull { chunk_index: 50, .. }), "{err}");
    assert!(err.to_string().contains("send audio no faster than real time"), "{err}");
    assert_eq!(asm.buffered(), 16_000);
}
