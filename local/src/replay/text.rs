//! Identifiers, error strings and the small prompt/response texts of generated events.

use sentinel_core::redact::luhn;

use crate::rng::Rng;

use super::Workload;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends the low `digits` (at most 16) hex digits of `x`, most significant first.
fn push_hex(s: &mut String, x: u64, digits: u32) {
    for i in (0..digits.min(16)).rev() {
        s.push(char::from(HEX[((x >> (4 * i)) & 0xF) as usize]));
    }
}

/// A random RFC 4122 version-4 UUID string.
pub(super) fn uuid_v4(rng: &mut Rng) -> String {
    let hi = (rng.next_u64() & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (rng.next_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let mut s = String::with_capacity(36);
    push_hex(&mut s, hi >> 32, 8);
    s.push('-');
    push_hex(&mut s, hi >> 16, 4);
    s.push('-');
    push_hex(&mut s, hi, 4);
    s.push('-');
    push_hex(&mut s, lo >> 48, 4);
    s.push('-');
    push_hex(&mut s, lo, 12);
    s
}

/// `prefix` followed by `digits` (at most 32) random hex digits.
pub(super) fn hex_id(rng: &mut Rng, prefix: &str, digits: u32) -> String {
    let digits = digits.min(32);
    let mut s = String::with_capacity(prefix.len() + digits as usize);
    s.push_str(prefix);
    let high = digits.saturating_sub(16);
    if high > 0 {
        push_hex(&mut s, rng.next_u64(), high);
    }
    push_hex(&mut s, rng.next_u64(), digits - high);
    s
}

/// `prefix` followed by 16 hex digits of `x`.
pub(super) fn hex_of(prefix: &str, x: u64) -> String {
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    push_hex(&mut s, x, 16);
    s
}

/// The kind of failure a generated call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    RateLimited,
    ServerError,
    Overloaded,
    BadGateway,
    Timeout,
}

impl Failure {
    /// Ordinary non-429 failures and their relative frequencies.
    pub const OTHER: [(Failure, f64); 4] = [
        (Failure::ServerError, 0.35),
        (Failure::Overloaded, 0.35),
        (Failure::BadGateway, 0.2),
        (Failure::Timeout, 0.1),
    ];

    /// Failures of a provider outage (an error burst) and their relative frequencies.
    pub const OUTAGE: [(Failure, f64); 3] = [
        (Failure::Overloaded, 0.6),
        (Failure::RateLimited, 0.25),
        (Failure::ServerError, 0.15),
    ];

    /// Draws one failure from a frequency table.
    pub fn draw(rng: &mut Rng, table: &[(Failure, f64)]) -> Failure {
        let mut u = rng.uniform() * table.iter().map(|(_, w)| w).sum::<f64>();
        for &(f, w) in table {
            if u < w {
                return f;
            }
            u -= w;
        }
        table[table.len() - 1].0
    }

    /// HTTP status the provider answered with.
    pub fn status(self) -> u16 {
        match self {
            Failure::RateLimited => 429,
            Failure::ServerError => 500,
            Failure::BadGateway => 502,
            Failure::Overloaded => 503,
            Failure::Timeout => 504,
        }
    }

    /// The error string as SDKs report it.
    pub fn message(self) -> &'static str {
        match self {
            Failure::RateLimited => {
                "429 Too Many Requests: rate limit exceeded, please retry after 20s"
            }
            Failure::ServerError => {
                "500 Internal Server Error: the server had an error while processing your request"
            }
            Failure::BadGateway => {
                "502 Bad Gateway: upstream connect error or disconnect/reset before headers"
            }
            Failure::Overloaded => {
                "503 Service Unavailable: the model is currently overloaded, please try again later"
            }
            Failure::Timeout => "504 Gateway Timeout: upstream request timed out after 60s",
        }
    }
}

const FIRST_NAMES: [&str; 12] = [
    "alice", "bob", "carol", "dmitri", "emma", "farah", "gustavo", "hana", "ivan", "julia",
    "kwame", "li",
];
const LAST_NAMES: [&str; 10] = [
    "smith", "garcia", "nguyen", "okafor", "muller", "rossi", "tanaka", "kowalski", "silva",
    "cohen",
];
const DOMAINS: [&str; 5] = [
    "example.com",
    "mail.example.org",
    "acme-corp.io",
    "gmail.com",
    "outlook.com",
];
const FUNCTIONS: [&str; 8] = [
    "parse_config",
    "merge_intervals",
    "retry_with_backoff",
    "render_invoice",
    "LruCache::get",
    "validate_email",
    "useDebounce",
    "handle_webhook",
];
const LANGUAGES: [&str; 5] = ["Rust", "Python", "TypeScript", "Go", "Java"];
const DOCUMENTS: [&str; 6] = [
    "Q3 board report",
    "master services agreement",
    "incident postmortem",
    "research paper on KV-cache reuse",
    "support ticket history",
    "quarterly earnings call transcript",
];
const QUESTIONS: [&str; 8] = [
    "How do I reset my password?",
    "Can you check the status of my last order?",
    "What is the refund policy for annual plans?",
    "Help me write a polite reply to my landlord about the heating.",
    "Why was I charged twice this month?",
    "Explain the difference between a Roth IRA and a traditional IRA.",
    "Can I change the delivery address after checkout?",
    "Translate 'see you next week' into Spanish.",
];

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn email(rng: &mut Rng) -> String {
    format!(
        "{}.{}{}@{}",
        pick(rng, &FIRST_NAMES),
        pick(rng, &LAST_NAMES),
        rng.below(100),
        pick(rng, &DOMAINS)
    )
}

fn phone(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("+1 (415) 555-{:04}", rng.below(10_000)),
        1 => format!("+44 20 7946 {:04}", rng.below(10_000)),
        _ => format!("212-555-{:04}", rng.below(10_000)),
    }
}

/// A 16-digit card number with a valid Luhn check digit.
fn card(rng: &mut Rng) -> String {
    let mut digits = [0u8; 16];
    digits[0] = 4;
    for d in digits.iter_mut().take(15).skip(1) {
        *d = rng.below(10) as u8;
    }
    digits[15] = (0..10)
        .find(|&check| {
            digits[15] = check;
            luhn(&digits)
        })
        .unwrap_or(0);
    let mut s = String::with_capacity(19);
    for (i, d) in digits.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            s.push(' ');
        }
        s.push(char::from(b'0' + d));
    }
    s
}

fn pii_sentence(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("You can reach me at {}.", email(rng)),
        1 => format!("Please call me back on {}.", phone(rng)),
        2 => format!("Charge the renewal to card {}.", card(rng)),
        _ => format!(
            "The requests came from 10.{}.{}.{} and {}.",
            rng.below(256),
            rng.below(256),
            1 + rng.below(254),
            email(rng)
        ),
    }
}

/// A short prompt and response for `workload`; the prompt carries PII when `with_pii`.
pub(super) fn conversation(rng: &mut Rng, workload: Workload, with_pii: bool) -> (String, String) {
    let (mut prompt, response) = match workload {
        Workload::Code => {
            let function = pick(rng, &FUNCTIONS);
            let language = pick(rng, &LANGUAGES);
            match rng.below(3) {
                0 => (
                    format!("Refactor `{function}` in {language} to remove the nested loop."),
                    format!("Here is a version of `{function}` that uses a single pass with a hash map:"),
                ),
                1 => (
                    format!("Write unit tests for `{function}` ({language})."),
                    format!("Sure. These tests cover the empty input, a typical case and an error case for `{function}`."),
                ),
                _ => (
                    format!("Why does `{function}` panic with 'index out of bounds'?"),
                    "The loop runs to `len()` inclusive; iterate to `len() - 1` or use an iterator."
                        .to_owned(),
                ),
            }
        }
        Workload::Conversation => (
            pick(rng, &QUESTIONS).to_owned(),
            "Happy to help! Here is what you can do:".to_owned(),
        ),
        Workload::LongContext => {
            let document = pick(rng, &DOCUMENTS);
            (
                format!(
                    "Summarize the attached {document} ({} pages) in five bullet points.",
                    2 + rng.below(60)
                ),
                format!("Summary of the {document}:\n- Key findings\n- Risks\n- Next steps"),
            )
        }
    };
    if with_pii {
        prompt.push(' ');
        prompt.push_str(&pii_sentence(rng));
    }
    (prompt, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let mut rng = Rng::seed_from_u64(1);
        let id = uuid_v4(&mut rng);
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn hex_ids() {
        let mut rng = Rng::seed_from_u64(2);
        let trace = hex_id(&mut rng, "", 32);
        assert_eq!(trace.len(), 32);
        assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hex_id(&mut rng, "req_", 24).len(), 28);
        assert_eq!(hex_of("s_", 0xAB), "s_00000000000000ab");
    }

    #[test]
    fn cards_pass_luhn() {
        let mut rng = Rng::seed_from_u64(3);
        for _ in 0..100 {
            let digits: Vec<u32> = card(&mut rng)
                .chars()
                .filter_map(|c| c.to_digit(10))
                .collect();
            let sum: u32 = digits
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &d)| {
                    if i % 2 == 1 {
                        (d * 2) % 9 + u32::from(d == 9) * 9
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0);
        }
    }
}
