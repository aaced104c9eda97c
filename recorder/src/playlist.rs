//! The HLS media playlist (`index.m3u8`) of a recording: fMP4 (CMAF) segments after one
//! initialization segment, an EVENT playlist while the recording runs (segments are only
//! ever appended), closed with `#EXT-X-ENDLIST` when it stops.

use std::fmt::Write;

/// One segment of the playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistSegment {
    /// URI relative to the playlist.
    pub uri: String,
    /// Length, microseconds.
    pub duration_micros: i64,
}

/// A recording's media playlist.
#[derive(Debug, Clone)]
pub struct Playlist {
    init_uri: String,
    target_secs: u64,
    segments: Vec<PlaylistSegment>,
    ended: bool,
}

impl Playlist {
    /// An empty playlist whose segments follow the initialization segment `init_uri` and
    /// aim at `target_secs` each.
    pub fn new(init_uri: impl Into<String>, target_secs: u64) -> Self {
        Self { init_uri: init_uri.into(), target_secs: target_secs.max(1), segments: Vec::new(), ended: false }
    }

    /// Appends a segment that landed.
    pub fn push(&mut self, uri: impl Into<String>, duration_micros: i64) {
        self.segments.push(PlaylistSegment { uri: uri.into(), duration_micros });
    }

    /// Marks the recording finished.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Whether the recording was marked finished.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The segments so far.
    pub fn segments(&self) -> &[PlaylistSegment] {
        &self.segments
    }

    /// The playlist text. The target duration covers the longest segment, rounded as HLS
    /// rounds (a sender that ignores keyframe requests can make segments longer than the
    /// configured target).
    pub fn render(&self) -> String {
        let longest = self.segments.iter().map(|s| (s.duration_micros + 500_000) / 1_000_000).max().unwrap_or(0);
        let target = self.target_secs.max(u64::try_from(longest).unwrap_or(0));
        let mut out = String::new();
        let _ = writeln!(out, "#EXTM3U");
        let _ = writeln!(out, "#EXT-X-VERSION:7");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:0");
        let _ = writeln!(out, "#EXT-X-PLAYLIST-TYPE:EVENT");
        let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", self.init_uri);
        for segment in &self.segments {
            let _ = writeln!(out, "#EXTINF:{}.{:06},", segment.duration_micros / 1_000_000, segment.duration_micros % 1_000_000);
            let _ = writeln!(out, "{}", segment.uri);
        }
        if self.ended {
            let _ = writeln!(out, "#EXT-X-ENDLIST");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_playlist_grows_and_ends() {
        let mut playlist = Playlist::new("init.mp4", 6);
        playlist.push("segment-00000.m4s", 6_033_333);
        playlist.push("segment-00001.m4s", 5_600_000);
        let live = playlist.render();
        assert!(!live.contains("#EXT-X-ENDLIST"));
        assert!(live.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"));
        playlist.push("segment-00002.m4s", 9_700_000);
        playlist.end();
        let done = playlist.render();
        assert_eq!(done.matches("#EXTINF:").count(), 3);
        assert!(done.contains("#EXTINF:6.033333,\nsegment-00000.m4s\n"));
        assert!(done.contains("#EXT-X-TARGETDURATION:10\n"), "covers the longest segment:\n{done}");
        assert!(done.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"));
        assert!(done.ends_with("#EXT-X-ENDLIST\n"));

        match m3u8_rs::parse_playlist_res(done.as_bytes()) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(parsed)) => {
                assert!(parsed.end_list);
                assert_eq!(parsed.target_duration, 10);
                assert_eq!(parsed.segments.len(), 3);
                assert_eq!(parsed.segments[1].uri, "segment-00001.m4s");
                assert!((parsed.segments[1].duration - 5.6).abs() < 1e-6);
            }
            other => panic!("not a media playlist: {other:?}"),
        }
    }
}
