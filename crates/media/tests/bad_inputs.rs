//! Bad inputs return errors; nothing panics.

mod common;

use osa_media::MediaError;
use osa_media::frame::{Fps, RgbFrame, VideoSize};
use osa_media::h264::{H264Config, H264Encoder};
use osa_media::mp4::{Fmp4Config, Fmp4Segmenter, Mp4Config, Mp4Writer};
use osa_media::opus::{AudioPacket, OpusAudioEncoder, OpusConfig};
use osa_media::output::{LiveStream, Mp4Render, OutputConfig};

use common::gradient;

fn size(side: u32) -> VideoSize {
    VideoSize::new(side, side).expect("valid size")
}

#[test]
fn odd_and_zero_sizes() {
    for (w, h) in [(63, 64), (64, 63), (0, 64), (64, 0), (4000, 64), (3000, 3000)] {
        assert!(matches!(VideoSize::new(w, h), Err(MediaError::InvalidSize { .. })), "{w}x{h}");
        let data = vec![0u8; (w * h * 3) as usize];
        assert!(RgbFrame::new(w, h, &data).is_err());
    }
}

#[test]
fn wrong_buffer_length() {
    let err = RgbFrame::new(64, 64, &[0u8; 64 * 64 * 3 - 1]).unwrap_err();
    assert!(matches!(err, MediaError::BufferLength { expected: 12288, actual: 12287, .. }));
    assert!(err.to_string().contains("12288"));
    assert!(RgbFrame::new(64, 64, &[]).is_err());
}

#[test]
fn unsupported_fps() {
    for fps in [0, 1, 23, 29, 50, 60, 120] {
        assert!(matches!(Fps::try_from(fps), Err(MediaError::UnsupportedFps(f)) if f == fps));
    }
}

#[test]
fn frame_of_another_size() {
    let mut enc = H264Encoder::new(H264Config::new(size(64), Fps::F25)).unwrap();
    let other = gradient(32, 32, 0);
    assert!(enc.encode(&RgbFrame::new(32, 32, &other).unwrap(), 0).is_err());
}

#[test]
fn non_monotonic_indices() {
    let mut render = Mp4Render::new(OutputConfig::new(size(64), Fps::F30)).unwrap();
    let rgb = gradient(64, 64, 0);
    let frame = RgbFrame::new(64, 64, &rgb).unwrap();
    render.push_frame(&frame, 5).unwrap();
    assert!(matches!(render.push_frame(&frame, 5), Err(MediaError::NonMonotonicIndex { .. })));
    assert!(matches!(render.push_frame(&frame, 4), Err(MediaError::NonMonotonicIndex { .. })));
    render.push_frame(&frame, 6).unwrap();

    let mut live = LiveStream::new(OutputConfig::new(size(64), Fps::F25), 1).unwrap();
    live.push_clip(12, &[frame]).unwrap();
    assert!(live.push_clip(0, &[frame]).is_err());
    assert!(live.push_clip(13, &[]).is_err());
    // A refused clip leaves the stream usable.
    live.push_clip(13, &[frame]).unwrap();
}

#[test]
fn muxers_refuse_bad_streams() {
    let mut enc = H264Encoder::new(H264Config::new(size(64), Fps::F25)).unwrap();
    let rgb = gradient(64, 64, 0);
    let frame = RgbFrame::new(64, 64, &rgb).unwrap();
    let first = enc.encode(&frame, 0).unwrap();
    let second = enc.encode(&frame, 1).unwrap();

    // A stream must start with a keyframe carrying SPS/PPS.
    let mut writer = Mp4Writer::new(Mp4Config { size: size(64), fps: Fps::F25, audio: None });
    assert!(writer.push_video(second.clone()).is_err());
    writer.push_video(first.clone()).unwrap();
    assert!(writer.push_video(first.clone()).is_err());
    // No audio track configured.
    let packet = AudioPacket { start: 0, duration: 960, data: vec![0xf8] };
    assert!(writer.push_audio(packet.clone()).is_err());
    assert!(writer.finish().is_ok());

    let audio = OpusAudioEncoder::new(OpusConfig::default()).unwrap().track_info();
    let mut seg =
        Fmp4Segmenter::new(Fmp4Config { size: size(64), fps: Fps::F25, audio: Some(audio) });
    assert!(seg.init_segment().is_err(), "no SPS/PPS yet");
    assert!(seg.write_segment(&[], &[]).is_err());
    assert!(seg.write_segment(std::slice::from_ref(&second), &[]).is_err());
    // Audio must be contiguous.
    let late = AudioPacket { start: 960, ..packet.clone() };
    assert!(matches!(
        seg.write_segment(std::slice::from_ref(&first), &[late]),
        Err(MediaError::AudioDiscontinuity { start: 960, expected: 0 })
    ));
    // A failed call changed nothing: the same good segment still works.
    seg.write_segment(&[first, second], &[packet]).unwrap();
    assert!(seg.init_segment().is_ok());
}

#[test]
fn bad_configs() {
    let mut config = H264Config::new(size(64), Fps::F25);
    config.bitrate_bps = 0;
    assert!(matches!(H264Encoder::new(config), Err(MediaError::InvalidConfig(_))));
    assert!(LiveStream::new(OutputConfig::new(size(64), Fps::F25), 0).is_err());
    let mut no_audio = OutputConfig::new(size(64), Fps::F25);
    no_audio.audio = None;
    let mut render = Mp4Render::new(no_audio).unwrap();
    assert!(render.push_audio_i16(&[0; 320]).is_err());
    let mut enc = OpusAudioEncoder::new(OpusConfig::default()).unwrap();
    assert!(enc.push_f32(&[f32::NAN]).is_err());
    assert!(
        OpusAudioEncoder::new(OpusConfig { sample_rate: 22_050, ..OpusConfig::default() }).is_err()
    );
}
