//! The W3C trace context (`traceparent`) as a value: parse, format, start a trace, derive a child.
//!
//! Format (version `00`): `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`, lowercase.
//! See <https://www.w3.org/TR/trace-context/#traceparent-header>.

use std::fmt;

use rand::Rng;

/// Length of a version-00 `traceparent` value.
const TRACEPARENT_LEN: usize = 55;
/// The only flag defined by version 00: the caller recorded (sampled) this trace.
const FLAG_SAMPLED: u8 = 0x01;

/// One position in a distributed trace: which trace, which span, and whether it is sampled.
///
/// ```
/// use herald::trace::TraceContext;
///
/// let incoming = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
///     .expect("a valid traceparent");
/// let child = incoming.child();
/// assert_eq!(child.trace_id, incoming.trace_id);
/// assert_ne!(child.span_id, incoming.span_id);
/// assert_eq!(TraceContext::parse(&child.to_traceparent()), Some(child));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace every span of one flow shares (never all zeros).
    pub trace_id: [u8; 16],
    /// This span (never all zeros).
    pub span_id: [u8; 8],
    /// Whether the trace is being recorded upstream.
    pub sampled: bool,
}

impl TraceContext {
    /// Start a new, sampled trace with random ids.
    pub fn new_root() -> Self {
        let mut rng = rand::thread_rng();
        TraceContext {
            trace_id: nonzero(|| rng.gen::<u128>()).to_be_bytes(),
            span_id: nonzero(|| rng.gen::<u64>()).to_be_bytes(),
            sampled: true,
        }
    }

    /// The trace a publish starts when no trace is in force: the event's UUIDv7 id is the trace
    /// id and its last 8 bytes the span id (sampled). `None` when `id` is not a UUIDv7.
    ///
    /// A UUIDv7 ends in 62 random bits, so its right-most 7 bytes are as random as W3C trace
    /// context asks of a trace id. Deriving the context from the id means a compact wire format
    /// need not send it (readers derive it again), and an event's trace is found by its id.
    ///
    /// ```
    /// use herald::trace::TraceContext;
    ///
    /// let ctx = TraceContext::for_event_id("019ab3f0-6f4a-7cc2-8a1e-5d2b9c0e4f11").unwrap();
    /// assert_eq!(
    ///     ctx.to_traceparent(),
    ///     "00-019ab3f06f4a7cc28a1e5d2b9c0e4f11-8a1e5d2b9c0e4f11-01"
    /// );
    /// assert_eq!(TraceContext::for_event_id("e1"), None);
    /// ```
    pub fn for_event_id(id: &str) -> Option<Self> {
        crate::envelope::v7_millis(id)?;
        let bytes = *uuid::Uuid::try_parse(id).ok()?.as_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&bytes[8..]);
        Some(TraceContext {
            trace_id: bytes,
            span_id,
            sampled: true,
        })
    }

    /// The `traceparent` value of [`for_event_id`](Self::for_event_id), built from the id's
    /// digits (lower-cased) without parsing them: this runs for every message on RabbitMQ, to
    /// decide whether the header can be left out and to derive it again on receipt.
    pub(crate) fn event_traceparent(id: &str) -> Option<[u8; TRACEPARENT_LEN]> {
        // Checks the layout too: 36 bytes, hyphens at 8, 13, 18 and 23, hex digits.
        crate::envelope::v7_millis(id)?;
        let b = id.as_bytes();
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
        // The five groups of digits, 8-4-4-4-12, side by side.
        out[3..11].copy_from_slice(&b[0..8]);
        out[11..15].copy_from_slice(&b[9..13]);
        out[15..19].copy_from_slice(&b[14..18]);
        out[19..23].copy_from_slice(&b[19..23]);
        out[23..35].copy_from_slice(&b[24..36]);
        if !out[3..35].iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        out[3..35].make_ascii_lowercase();
        out.copy_within(19..35, 36);
        Some(out)
    }

    /// A new span in the same trace, with this one as its parent (keeps the sampled flag).
    pub fn child(&self) -> Self {
        let mut rng = rand::thread_rng();
        TraceContext {
            trace_id: self.trace_id,
            span_id: nonzero(|| rng.gen::<u64>()).to_be_bytes(),
            sampled: self.sampled,
        }
    }

    /// Parse a `traceparent` header value. `None` when it is not valid W3C trace context (wrong
    /// length or version, upper-case or non-hex digits, all-zero ids); such a header is ignored,
    /// as the specification asks, and the message starts a new trace.
    pub fn parse(value: &str) -> Option<Self> {
        // Runs for every delivery: one table lookup per digit, no early exit inside the loops.
        let b = value.as_bytes();
        let head: &[u8; TRACEPARENT_LEN] = b.get(..TRACEPARENT_LEN)?.try_into().ok()?;
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let mut bad = 0u8;
        let mut byte = |i: usize| {
            let (hi, lo) = (HEX[head[i] as usize], HEX[head[i + 1] as usize]);
            bad |= hi | lo;
            hi << 4 | (lo & 0x0f)
        };
        let version = byte(0);
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = byte(3 + 2 * i);
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = byte(36 + 2 * i);
        }
        let flags = byte(53);
        if bad & INVALID != 0 || trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        // Version ff is forbidden; 00 has exactly 55 characters; later versions may append
        // fields after another dash, which we do not read.
        match version {
            0xff => return None,
            0x00 if b.len() != TRACEPARENT_LEN => return None,
            _ if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & FLAG_SAMPLED != 0,
        })
    }

    /// The `traceparent` header value (version 00).
    pub fn to_traceparent(&self) -> String {
        // Hex digits and dashes only: always ASCII, so this never falls back to the empty string.
        std::str::from_utf8(&self.traceparent_bytes())
            .map(str::to_owned)
            .unwrap_or_default()
    }

    fn traceparent_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        if self.sampled {
            out[54] = b'1';
        }
        out
    }

    /// The trace id as 32 lowercase hex digits, formatted lazily (for log fields).
    pub fn trace_id_hex(&self) -> Hex<'_> {
        Hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits, formatted lazily (for log fields).
    pub fn span_id_hex(&self) -> Hex<'_> {
        Hex(&self.span_id)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{}",
            self.trace_id_hex(),
            self.span_id_hex(),
            if self.sampled { "01" } else { "00" }
        )
    }
}

/// Bytes shown as lowercase hex without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0x0f) as usize];
    }
}

/// Marks a byte that is not a lowercase hex digit in [`HEX`] (the spec forbids upper case).
const INVALID: u8 = 0x10;

/// The value of each lowercase hex digit; [`INVALID`] for every other byte.
const HEX: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Draw until non-zero: an all-zero id is invalid (and comes up once in 2^64 draws at most).
fn nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let v = draw();
        if v != T::default() {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn an_events_trace_is_built_from_its_id_digits() {
        for _ in 0..100 {
            let id = uuid::Uuid::now_v7().to_string();
            let ctx = TraceContext::for_event_id(&id).expect("a UUIDv7");
            let built = TraceContext::event_traceparent(&id).expect("a UUIDv7");
            assert_eq!(built, ctx.traceparent_bytes(), "{id}");
            let upper = TraceContext::event_traceparent(&id.to_uppercase());
            assert_eq!(upper, Some(built), "digits are lower-cased");
            assert_eq!(TraceContext::parse(&ctx.to_traceparent()), Some(ctx));
        }
        let not_hex = "019ab3f0-6f4a-7cc2-8a1e-5d2b9c0e4fzz";
        assert_eq!(TraceContext::event_traceparent(not_hex), None);
        let v4 = uuid::Uuid::new_v4().to_string();
        assert_eq!(TraceContext::event_traceparent(&v4), None);
        assert_eq!(TraceContext::for_event_id(&v4), None);
    }

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let t = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(
            t.trace_id_hex().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(t.span_id_hex().to_string(), "b7ad6b7169203331");
        assert!(t.sampled);
        assert_eq!(t.to_traceparent(), EXAMPLE);
        assert_eq!(t.to_string(), EXAMPLE);
        let unsampled = TraceContext::parse(&EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        assert!(unsampled.to_traceparent().ends_with("-00"));
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        let bad = [
            "",
            "garbage",
            &EXAMPLE[..54],
            &format!("{EXAMPLE}0"),
            &EXAMPLE.to_uppercase(),
            &EXAMPLE.replacen("00-", "ff-", 1),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ];
        for v in bad {
            assert_eq!(TraceContext::parse(v), None, "{v:?} must be rejected");
        }
        // A later version may append fields; the first four are still read.
        let future = format!("{}-extra", EXAMPLE.replacen("00-", "01-", 1));
        assert!(TraceContext::parse(&future).is_some());
    }

    #[test]
    fn roots_are_fresh_and_children_stay_in_the_trace() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert!(a.sampled);
        let c = a.child();
        assert_eq!(c.trace_id, a.trace_id);
        assert_ne!(c.span_id, a.span_id);
        assert_eq!(TraceContext::parse(&c.to_traceparent()), Some(c));
    }
}
