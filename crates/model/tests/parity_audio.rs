//! Parity of the audio path with openai-whisper and EchoMimic's feature code
//! (reference: tests/reference/audio.py).

mod common;

use osa_model::audio::{
    AudioError, AudioFeatureExtractor, LogMel, WhisperEncoder, WhisperEncoderConfig,
    features::{chunk_count, frame_windows, hidden_states_for_mel},
    mel::{N_FFT, N_MELS, SAMPLE_RATE, mel_filterbank},
};
use tch::{Device, Kind, Tensor, nn};

const TOL: f64 = 1e-4;

type Io = std::collections::HashMap<String, Tensor>;

/// The one fixture of tests/reference/audio.py (every case, by prefix).
fn fixture() -> (common::Fixture, Io) {
    let f = common::fixture("audio.py", "audio", &[]);
    let io = common::read(&f.io);
    (f, io)
}

fn speech(io: &Io) -> Vec<f32> {
    Vec::try_from(&io["speech_samples"]).unwrap()
}

/// Builds the encoder at `cfg` and loads `weights` through VarStore::load.
fn load_encoder(
    cfg: &WhisperEncoderConfig,
    weights: &std::path::Path,
) -> (nn::VarStore, WhisperEncoder) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let enc = WhisperEncoder::new(vs.root() / "encoder", cfg);
    vs.load(weights).unwrap();
    (vs, enc)
}

#[test]
fn mel_filterbank_matches_whisper_asset() {
    let (_, io) = fixture();
    let expected = &io["mel_80"];
    let ours = Tensor::from_slice(&mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS)).view([80, 201]);
    common::assert_close("mel_80 filterbank", &ours, expected, 1e-6);
    let max_abs = (&ours - expected).abs().max().double_value(&[]);
    eprintln!("mel_80 filterbank: max abs difference {max_abs:.3e}");
    assert!(max_abs < 1e-7);
}

#[test]
fn log_mel_of_speech_matches_whisper() {
    let (_, io) = fixture();
    let x = Tensor::from_slice(&speech(&io));
    let mel = LogMel::new(Device::Cpu).compute(&x).unwrap();
    common::assert_close("log-mel of speech", &mel, &io["speech_mel"], TOL);
}

#[test]
fn encoder_hidden_states_match_whisper() {
    let cfg = WhisperEncoderConfig::tiny();
    let (f, io) = fixture();
    let (_vs, enc) = load_encoder(&cfg, &f.weights);
    let hidden = enc.hidden_states(&io["enc_mel"]).unwrap();
    assert_eq!(hidden.size(), [2, cfg.n_ctx, 5, cfg.n_state]);
    common::assert_close("encoder hidden states", &hidden, &io["enc_hidden"], TOL);
    for l in 0..5 {
        let what = format!("encoder hidden state {l}");
        common::assert_close(&what, &hidden.select(2, l), &io["enc_hidden"].select(2, l), TOL);
    }
    common::assert_close(
        "encoder output (ln_post)",
        &enc.forward(&io["enc_mel"]).unwrap(),
        &io["enc_out"],
        TOL,
    );
}

#[test]
fn encoder_batch_equals_singles() {
    let cfg = WhisperEncoderConfig::tiny();
    let (f, io) = fixture();
    let (_vs, enc) = load_encoder(&cfg, &f.weights);
    let mel = &io["enc_mel"];
    let batch = enc.hidden_states(mel).unwrap();
    for i in 0..2 {
        let single = enc.hidden_states(&mel.narrow(0, i, 1)).unwrap();
        common::assert_close(
            &format!("batch row {i} vs single"),
            &batch.narrow(0, i, 1),
            &single,
            1e-6,
        );
    }
}

#[test]
fn encoder_rejects_bad_shapes() {
    let cfg = WhisperEncoderConfig::tiny();
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = WhisperEncoder::new(vs.root() / "encoder", &cfg);
    for shape in [vec![80, 40], vec![1, 80, 41], vec![1, 79, 40], vec![0, 80, 40]] {
        let mel = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
        assert!(matches!(enc.hidden_states(&mel), Err(AudioError::Shape { .. })), "{shape:?}");
    }
}

#[test]
fn frame_windows_match_feature2chunks() {
    let (_, io) = fixture();
    let hidden = &io["win_hidden"];
    let fps_list = [24u32, 25, 30, 60];
    for fps in fps_list {
        let expected = &io[&format!("win_chunks_{fps}")];
        let n = chunk_count(hidden.size()[0] as usize, fps).unwrap();
        assert_eq!(n as i64, expected.size()[0], "chunk count at {fps} fps");
        let ours = frame_windows(hidden, fps, n).unwrap();
        assert_eq!(ours.size(), expected.size());
        // A pure gather: bit-exact.
        assert!(ours.equal(expected), "windows at {fps} fps differ");
    }
    let counts = Vec::<Vec<i64>>::try_from(&io["win_counts"]).unwrap();
    for (fps, row) in fps_list.into_iter().zip(counts) {
        for (t, &expected) in (1..).zip(&row) {
            assert_eq!(chunk_count(t, fps).unwrap() as i64, expected, "{t} positions at {fps} fps");
        }
    }
}

#[test]
fn whole_signal_features_match_echomimic_pipeline() {
    let cfg = WhisperEncoderConfig::tiny();
    let (f, io) = fixture();
    let (_vs, enc) = load_encoder(&cfg, &f.weights);
    let extractor = AudioFeatureExtractor::new(enc);
    let x = speech(&io);
    let hidden = extractor.hidden_states(&x).unwrap();
    common::assert_close("joined piece features", &hidden, &io["pipe_features"], TOL);
    let chunks = extractor.features(&x, 25).unwrap();
    assert_eq!(chunks.size(), io["pipe_chunks"].size());
    common::assert_close("per-frame windows of speech", &chunks, &io["pipe_chunks"], TOL);
    // The mel-level entry point gives the same as the signal-level one.
    let mel = extractor.log_mel().compute(&Tensor::from_slice(&x)).unwrap();
    let again = hidden_states_for_mel(extractor.encoder(), &mel).unwrap();
    assert!(again.allclose(&hidden, 1e-6, 1e-6, false));
}

#[test]
fn whisper_tiny_keys_and_shapes_match_checkpoint_list() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _enc = WhisperEncoder::new(vs.root() / "encoder", &WhisperEncoderConfig::default());
    let tsv = common::echomimic_keys("whisper_tiny_encoder.tsv");
    let mut expected: Vec<(String, Vec<i64>)> = tsv
        .lines()
        .skip(1)
        .map(|line| {
            let mut cols = line.split('\t');
            let key = cols.next().unwrap().to_string();
            let shape = cols.next().unwrap().trim_matches(['[', ']']);
            (key, shape.split(',').map(|d| d.parse().unwrap()).collect())
        })
        .collect();
    let mut ours: Vec<(String, Vec<i64>)> =
        vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect();
    expected.sort();
    ours.sort();
    assert_eq!(expected.len(), 67);
    assert_eq!(ours, expected);
}

#[test]
fn whisper_tiny_shapes_for_five_seconds_at_24_fps() {
    // Real whisper-tiny sizes (random weights): one 3000-frame piece, the
    // 5 s example of EchoMimic's config notes (122 windows at 24 fps).
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = WhisperEncoder::new(vs.root() / "encoder", &WhisperEncoderConfig::default());
    let extractor = AudioFeatureExtractor::new(enc);
    let t = Tensor::arange(80_000, (Kind::Float, Device::Cpu)) / f64::from(SAMPLE_RATE);
    let x: Vec<f32> = Vec::try_from((t * 2.0 * std::f64::consts::PI * 220.0).sin() * 0.3).unwrap();
    assert_eq!(extractor.hidden_states(&x).unwrap().size(), [250, 5, 384]);
    assert_eq!(extractor.features(&x, 24).unwrap().size(), [122, 50, 384]);
}
