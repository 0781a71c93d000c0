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

    /// The trace a publish starts when no trace is in force, derived from the event's UUIDv7 id
    /// (sampled); `None` when `id` is not a UUIDv7. Deriving it means a compact wire format need
    /// not send it: readers derive it again from the id, and an event's trace is found from its id.
    ///
    /// The trace id's first 8 bytes are the id's (its millisecond, so trace ids sort by time);
    /// the last 8, and the span id, are the id's 16 bytes mixed (splitmix64's finalizer). Not the
    /// id's own last bytes: those hold fixed variant bits and uuid's per-millisecond counter,
    /// while samplers that decide by trace-id ratio read the low 8 bytes as a uniform number.
    ///
    /// ```
    /// use herald::trace::TraceContext;
    ///
    /// let id = "019ab3f0-6f4a-7cc2-8a1e-5d2b9c0e4f11";
    /// let ctx = TraceContext::for_event_id(id).unwrap();
    /// assert_eq!(ctx.trace_id[..8], [0x01, 0x9a, 0xb3, 0xf0, 0x6f, 0x4a, 0x7c, 0xc2]);
    /// assert_eq!(TraceContext::for_event_id(&id.to_uppercase()), Some(ctx));
    /// assert_eq!(TraceContext::for_event_id("e1"), None);
    /// ```
    pub fn for_event_id(id: &str) -> Option<Self> {
        crate::envelope::parse_v7_id(id).map(|u| Self::for_event_uuid(&u))
    }

    /// [`for_event_id`](Self::for_event_id) for an id already parsed (and known to be a UUIDv7).
    pub fn for_event_uuid(id: &uuid::Uuid) -> Self {
        let bytes = id.as_bytes();
        let (mut hi, mut lo) = ([0u8; 8], [0u8; 8]);
        hi.copy_from_slice(&bytes[..8]);
        lo.copy_from_slice(&bytes[8..]);
        let (hi, lo) = (u64::from_be_bytes(hi), u64::from_be_bytes(lo));
        let low = mix(lo ^ mix(hi));
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&bytes[..8]);
        trace_id[8..].copy_from_slice(&low.to_be_bytes());
        TraceContext {
            trace_id,
            span_id: mix(low ^ hi).max(1).to_be_bytes(),
            sampled: true,
        }
    }

    /// Whether `traceparent` is this context's header value, compared without making a string
    /// (this runs for every message on RabbitMQ, to decide whether the header can be left out).
    pub fn is_written_as(&self, traceparent: &str) -> bool {
        self.traceparent_bytes() == traceparent.as_bytes()
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

/// splitmix64's finalizer: a bijection on `u64` whose output bits each depend on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

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
    fn an_events_trace_is_derived_from_its_id() {
        let mut low_half = 0;
        for _ in 0..1000 {
            let id = uuid::Uuid::now_v7();
            let text = id.to_string();
            let ctx = TraceContext::for_event_id(&text).expect("a UUIDv7");
            assert_eq!(TraceContext::for_event_id(&text.to_uppercase()), Some(ctx));
            assert!(ctx.is_written_as(&ctx.to_traceparent()));
            assert_eq!(TraceContext::parse(&ctx.to_traceparent()), Some(ctx));
            assert_eq!(ctx.trace_id[..8], id.as_bytes()[..8]);
            // What a trace-id ratio sampler reads (the low 8 bytes, shifted right once): about
            // half below the midpoint, though ids made in one millisecond differ in a counter.
            let mut low = [0u8; 8];
            low.copy_from_slice(&ctx.trace_id[8..]);
            if u64::from_be_bytes(low) >> 1 < 1 << 62 {
                low_half += 1;
            }
        }
        assert!(
            (400..=600).contains(&low_half),
            "{low_half} of 1000 in the low half"
        );
        let not_hex = "019ab3f0-6f4a-7cc2-8a1e-5d2b9c0e4fzz";
        assert_eq!(TraceContext::for_event_id(not_hex), None);
        let v4 = uuid::Uuid::new_v4().to_string();
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
