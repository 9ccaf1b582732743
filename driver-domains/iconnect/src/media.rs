//! Media streams: direction, sample format, rate, channels and priority class of an audio
//! stream (the sndif protocol carries the samples).

use crate::keys::{self, KeySink, KeySource};
use crate::{AnswerKeys, Class, Decision, Error};
use xen_abi::sndif;

/// Direction.
pub const DIRECTION: &str = "iconnect-media-direction";
/// Sample format (sndif name).
pub const FORMAT: &str = "iconnect-media-format";
/// Sample rate, Hz.
pub const RATE: &str = "iconnect-media-rate-hz";
/// Channels.
pub const CHANNELS: &str = "iconnect-media-channels";
/// Priority class.
pub const CLASS: &str = "iconnect-media-class";
/// Answer keys.
pub const ANSWER: AnswerKeys = AnswerKeys {
    status: "iconnect-media-status",
    reason: "iconnect-media-reason",
    error_key: "iconnect-media-error-key",
};
/// Granted rate.
pub const GRANTED_RATE: &str = "iconnect-media-granted-rate-hz";
/// Granted channels.
pub const GRANTED_CHANNELS: &str = "iconnect-media-granted-channels";
/// Granted format.
pub const GRANTED_FORMAT: &str = "iconnect-media-granted-format";

/// Accepted sample rates.
pub const RATE_RANGE: (u64, u64) = (4000, 384_000);
/// Accepted channel counts.
pub const CHANNEL_RANGE: (u64, u64) = (1, 64);

/// Stream direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// VM to speakers.
    Playback,
    /// Microphone to VM.
    Capture,
}

impl Direction {
    /// Key value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Playback => "playback",
            Direction::Capture => "capture",
        }
    }
}

/// A sample format: an `XENSND_PCM_FORMAT_*` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format(pub u8);

impl Format {
    /// Parses a sndif format name.
    pub fn parse(key: &'static str, v: &str) -> Result<Self, Error> {
        sndif::pcm_format_from_name(v)
            .map(Format)
            .ok_or(Error::BadToken { key })
    }
    /// The sndif name.
    pub fn as_str(self) -> &'static str {
        sndif::PCM_FORMAT_NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("")
    }
}

/// A VM's stream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaRequest {
    /// Direction (required).
    pub direction: Direction,
    /// Format (required).
    pub format: Format,
    /// Rate, Hz (required).
    pub rate_hz: u32,
    /// Channels (required).
    pub channels: u8,
    /// Class (default `realtime`: audio is latency-critical).
    pub class: Class,
}

impl MediaRequest {
    /// Reads the request; `Ok(None)` if no `iconnect-media-*` key is present.
    pub fn from_keys<S: KeySource + ?Sized>(src: &S) -> Result<Option<Self>, Error> {
        fn req<'a>(k: &'static str, v: Option<&'a str>) -> Result<&'a str, Error> {
            v.ok_or(Error::Missing { key: k })
        }
        let vals = [DIRECTION, FORMAT, RATE, CHANNELS, CLASS].map(|k| src.get(k));
        if vals.iter().all(Option::is_none) {
            return Ok(None);
        }
        let direction = match req(DIRECTION, vals[0])? {
            "playback" => Direction::Playback,
            "capture" => Direction::Capture,
            _ => return Err(Error::BadToken { key: DIRECTION }),
        };
        let format = Format::parse(FORMAT, req(FORMAT, vals[1])?)?;
        let rate_hz =
            keys::parse_in_range(RATE, req(RATE, vals[2])?, RATE_RANGE.0, RATE_RANGE.1)? as u32;
        let channels = keys::parse_in_range(
            CHANNELS,
            req(CHANNELS, vals[3])?,
            CHANNEL_RANGE.0,
            CHANNEL_RANGE.1,
        )? as u8;
        let class = vals[4]
            .map(|v| Class::parse(CLASS, v))
            .transpose()?
            .unwrap_or(Class::Realtime);
        Ok(Some(Self {
            direction,
            format,
            rate_hz,
            channels,
            class,
        }))
    }

    /// Writes the request (frontend side).
    pub fn write<S: KeySink + ?Sized>(&self, sink: &mut S) -> Result<(), Error> {
        sink.set(DIRECTION, self.direction.as_str())?;
        sink.set(FORMAT, self.format.as_str())?;
        keys::set_u64(sink, RATE, self.rate_hz as u64)?;
        keys::set_u64(sink, CHANNELS, self.channels as u64)?;
        sink.set(CLASS, self.class.as_str())
    }

    /// Bytes per second of the stream (for admission against a bus or network budget).
    pub fn bytes_per_second(&self) -> u64 {
        let bits: u64 = match self.format.0 {
            0 | 1 | 20 | 21 => 8,
            2..=5 => 16,
            6..=13 | 14 | 15 | 18 | 19 => 32,
            16 | 17 => 64,
            _ => 8, // compressed formats: upper bound unknown, count a byte per sample
        };
        bits / 8 * self.rate_hz as u64 * self.channels as u64
    }
}

/// Mixing role of a stream when one device is shared: a stream ducks every stream of a lower
/// role while it plays. Derived from the stream's class: `realtime` = alert (alarms,
/// notifications), `interactive` = voice (calls), `bulk` = media (music, video), `background`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Background sound.
    Background,
    /// Music, video.
    Media,
    /// Calls.
    Voice,
    /// Alarms, notifications.
    Alert,
}

impl Role {
    /// The role of a class.
    pub fn from_class(c: Class) -> Self {
        match c {
            Class::Realtime => Role::Alert,
            Class::Interactive => Role::Voice,
            Class::Bulk => Role::Media,
            Class::Background => Role::Background,
        }
    }
    /// Mixing priority (higher ducks lower).
    pub fn priority(self) -> u8 {
        self as u8
    }
}

impl MediaRequest {
    /// The stream's mixing role.
    pub fn role(&self) -> Role {
        Role::from_class(self.class)
    }
}

/// What the backend granted (it may adapt rate, channels or format to the hardware).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaGrant {
    /// Rate, Hz.
    pub rate_hz: u32,
    /// Channels.
    pub channels: u8,
    /// Format.
    pub format: Format,
}

/// Writes a media decision.
pub fn write_decision<S: KeySink + ?Sized>(
    d: &Decision<MediaGrant>,
    sink: &mut S,
) -> Result<(), Error> {
    crate::write_decision_head(d, &ANSWER, sink)?;
    if let Decision::Granted(g) = d {
        keys::set_u64(sink, GRANTED_RATE, g.rate_hz as u64)?;
        keys::set_u64(sink, GRANTED_CHANNELS, g.channels as u64)?;
        sink.set(GRANTED_FORMAT, g.format.as_str())?;
    }
    Ok(())
}

/// Reads a media decision (`Ok(None)`: not answered yet).
pub fn read_decision<S: KeySource + ?Sized>(
    src: &S,
) -> Result<Option<Decision<MediaGrant>>, Error> {
    let Some(head) = crate::read_decision_head(&ANSWER, src)? else {
        return Ok(None);
    };
    if let Some((reason, error_key)) = head {
        return Ok(Some(Decision::Refused { reason, error_key }));
    }
    let get = |k: &'static str| src.get(k).ok_or(Error::Missing { key: k });
    Ok(Some(Decision::Granted(MediaGrant {
        rate_hz: keys::parse_in_range(GRANTED_RATE, get(GRANTED_RATE)?, RATE_RANGE.0, RATE_RANGE.1)?
            as u32,
        channels: keys::parse_in_range(
            GRANTED_CHANNELS,
            get(GRANTED_CHANNELS)?,
            CHANNEL_RANGE.0,
            CHANNEL_RANGE.1,
        )? as u8,
        format: Format::parse(GRANTED_FORMAT, get(GRANTED_FORMAT)?)?,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ArraySink, PairSource};

    #[test]
    fn request() {
        let src = PairSource(&[
            (DIRECTION, "playback"),
            (FORMAT, "s16_le"),
            (RATE, "48000"),
            (CHANNELS, "2"),
        ]);
        let r = MediaRequest::from_keys(&src).unwrap().unwrap();
        assert_eq!(r.format, Format(2));
        assert_eq!(r.class, Class::Realtime);
        assert_eq!(r.bytes_per_second(), 192_000);
        assert_eq!(r.role(), Role::Alert);
        assert!(Role::from_class(Class::Bulk).priority() < Role::Voice.priority());
        let mut s = ArraySink::<8, 48>::default();
        r.write(&mut s).unwrap();
        assert_eq!(MediaRequest::from_keys(&s), Ok(Some(r)));
        assert_eq!(MediaRequest::from_keys(&PairSource(&[])), Ok(None));
        assert_eq!(
            MediaRequest::from_keys(&PairSource(&[(RATE, "48000")])),
            Err(Error::Missing { key: DIRECTION })
        );
        let bad: &[(&[(&str, &str)], Error)] = &[
            (
                &[
                    (DIRECTION, "both"),
                    (FORMAT, "s16_le"),
                    (RATE, "48000"),
                    (CHANNELS, "2"),
                ],
                Error::BadToken { key: DIRECTION },
            ),
            (
                &[
                    (DIRECTION, "capture"),
                    (FORMAT, "S16_LE"),
                    (RATE, "48000"),
                    (CHANNELS, "2"),
                ],
                Error::BadToken { key: FORMAT },
            ),
            (
                &[
                    (DIRECTION, "capture"),
                    (FORMAT, "s16_le"),
                    (RATE, "1000000"),
                    (CHANNELS, "2"),
                ],
                Error::OutOfRange { key: RATE },
            ),
            (
                &[
                    (DIRECTION, "capture"),
                    (FORMAT, "s16_le"),
                    (RATE, "48000"),
                    (CHANNELS, "0"),
                ],
                Error::OutOfRange { key: CHANNELS },
            ),
        ];
        for (pairs, want) in bad {
            assert_eq!(MediaRequest::from_keys(&PairSource(pairs)), Err(*want));
        }
    }

    #[test]
    fn decision() {
        let d = Decision::Granted(MediaGrant {
            rate_hz: 44100,
            channels: 2,
            format: Format(14),
        });
        let mut s = ArraySink::<8, 48>::default();
        write_decision(&d, &mut s).unwrap();
        assert_eq!(s.get(GRANTED_FORMAT), Some("float_le"));
        assert_eq!(read_decision(&s), Ok(Some(d)));
    }
}
