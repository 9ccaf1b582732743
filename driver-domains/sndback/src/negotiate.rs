//! The semantic side of a stream (iConnect keys, `iconnect::media`): what the backend grants a
//! guest's [`MediaRequest`] on this platform, and the mixing priority its role earns.
//!
//! The hub converts format, rate and channels, so a request the platform offers is granted as
//! asked; otherwise the nearest offered shape is granted (nearest rate, channels clamped into
//! range, the format `s16_le` if offered, else the first offered) and the guest opens its sndif
//! stream with that. Capture on a device without a capture path is refused as `unsupported`.

use iconnect::media::{Direction, Format, MediaGrant, MediaRequest};
use iconnect::{Decision, RefuseReason};

use crate::Caps;

/// The decision for `req` given the platform's `caps` and whether the device can capture.
pub fn decide(req: &MediaRequest, caps: &Caps, can_capture: bool) -> Decision<MediaGrant> {
    let unsupported = Decision::Refused {
        reason: RefuseReason::Unsupported,
        error_key: None,
    };
    if req.direction == Direction::Capture && !can_capture {
        return unsupported;
    }
    let offered = caps.formats & media_dsp::format::SUPPORTED_MASK;
    let Some(&first_rate) = caps.rates.first() else {
        return unsupported;
    };
    if offered == 0 || caps.channels.min > caps.channels.max || caps.channels.max == 0 {
        return unsupported;
    }
    let format = if req.format.0 < 64 && offered & (1 << req.format.0) != 0 {
        req.format
    } else if offered & (1 << 2) != 0 {
        Format(2)
    } else {
        Format(offered.trailing_zeros() as u8)
    };
    let rate_hz = caps.rates.iter().copied().fold(first_rate, |best, r| {
        if r.abs_diff(req.rate_hz) < best.abs_diff(req.rate_hz) {
            r
        } else {
            best
        }
    });
    let channels = u32::from(req.channels).clamp(caps.channels.min.max(1), caps.channels.max);
    Decision::Granted(MediaGrant {
        rate_hz,
        channels: channels.min(255) as u8,
        format,
    })
}

/// The mixing priority of a stream: its role's (alert > voice > media > background).
pub fn priority(req: &MediaRequest) -> u8 {
    req.role().priority()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iconnect::Class;

    fn req(direction: Direction, format: u8, rate_hz: u32, channels: u8) -> MediaRequest {
        MediaRequest {
            direction,
            format: Format(format),
            rate_hz,
            channels,
            class: Class::Bulk,
        }
    }

    #[test]
    fn grants_offered_shapes_and_adapts_others() {
        let caps = Caps::default();
        let g = |r: &MediaRequest| match decide(r, &caps, true) {
            Decision::Granted(g) => (g.format.0, g.rate_hz, g.channels),
            d => panic!("{d:?}"),
        };
        assert_eq!(g(&req(Direction::Playback, 14, 44100, 2)), (14, 44100, 2));
        assert_eq!(g(&req(Direction::Capture, 2, 16000, 1)), (2, 16000, 1));
        // mu-law, 44.0 kHz, 6 channels: s16_le, 44.1 kHz, 2 channels.
        assert_eq!(g(&req(Direction::Playback, 20, 44000, 6)), (2, 44100, 2));
        assert_eq!(g(&req(Direction::Playback, 2, 384000, 1)), (2, 96000, 1));
        assert_eq!(
            decide(&req(Direction::Capture, 2, 16000, 1), &caps, false),
            Decision::Refused {
                reason: RefuseReason::Unsupported,
                error_key: None
            }
        );
        let mut r = req(Direction::Playback, 2, 48000, 2);
        assert_eq!(priority(&r), iconnect::media::Role::Media.priority());
        r.class = Class::Realtime;
        assert!(priority(&r) > iconnect::media::Role::Voice.priority());
    }
}
