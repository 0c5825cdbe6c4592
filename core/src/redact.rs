//! PII and secret redaction of free text (DESIGN §3.1).
//!
//! Each match is replaced by `[REDACTED:<kind>]`. The built-in kinds ([`PiiKind`]) are
//! secrets of common providers, JWTs, bearer tokens, emails, payment card numbers,
//! US SSNs, IP addresses and phone numbers; configured patterns
//! ([`RedactionConfig::extra_patterns`]) add more.
//!
//! How it stays fast and precise:
//!
//! * All patterns are compiled once; a [`RegexSet`] pass over the text tells which kinds
//!   occur at all, so text without PII costs one scan and no allocation.
//! * Built-in patterns are ASCII-only (`(?-u)`), which keeps them on the lazy DFA even
//!   for non-ASCII text.
//! * Candidates are then checked: Luhn and issuer prefix for cards, octet range for IPv4,
//!   a full parse for IPv6, area/group/serial rules for SSNs, digit counts for phones,
//!   random-looking bodies for `sk-` keys and bearer tokens, and for numeric kinds that
//!   the match is not part of a longer token (`1.2.3.4.5` is a version, not an IP).
//! * Where matches overlap, the earlier kind in priority order wins: configured patterns
//!   first, then [`PiiKind::ALL`] in order (secrets before numbers, phones last).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

/// A built-in kind of sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    /// JSON Web Token (`eyJ….….…`).
    Jwt,
    /// Anthropic API key (`sk-ant-…`).
    AnthropicKey,
    /// OpenAI API key (`sk-…`, `sk-proj-…`, `sk-svcacct-…`, `sk-admin-…`).
    OpenaiKey,
    /// AWS access key id (`AKIA…`, `ASIA…`).
    AwsAccessKey,
    /// GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// Google API key (`AIza…`).
    GoogleApiKey,
    /// Slack token (`xoxb-`, `xoxp-`, `xoxa-`, …).
    SlackToken,
    /// Stripe secret or restricted key (`sk_live_`, `rk_live_`, `sk_test_`, `rk_test_`).
    StripeKey,
    /// Hugging Face token (`hf_…`).
    HuggingfaceToken,
    /// The token of an `Authorization: Bearer <token>` value (the word `Bearer` is kept).
    BearerToken,
    /// Email address.
    Email,
    /// Payment card number, 13–19 digits with optional spaces or dashes, Luhn-checked.
    CardNumber,
    /// US social security number `AAA-GG-SSSS` (or spaces) with a valid area, group and serial.
    Ssn,
    /// IPv6 address.
    Ipv6,
    /// IPv4 address with octets 0–255.
    Ipv4,
    /// International (`+<country> …`, 8–15 digits) or US (`(415) 555-2671`, `415-555-2671`) phone number.
    Phone,
}

impl PiiKind {
    /// Every built-in kind, in priority order (an earlier kind wins where matches overlap).
    pub const ALL: [PiiKind; 16] = [
        PiiKind::Jwt,
        PiiKind::AnthropicKey,
        PiiKind::OpenaiKey,
        PiiKind::AwsAccessKey,
        PiiKind::GithubToken,
        PiiKind::GoogleApiKey,
        PiiKind::SlackToken,
        PiiKind::StripeKey,
        PiiKind::HuggingfaceToken,
        PiiKind::BearerToken,
        PiiKind::Email,
        PiiKind::CardNumber,
        PiiKind::Ssn,
        PiiKind::Ipv6,
        PiiKind::Ipv4,
        PiiKind::Phone,
    ];

    /// The kind's name, used in the `[REDACTED:<name>]` marker, in configuration and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Jwt => "jwt",
            PiiKind::AnthropicKey => "anthropic_key",
            PiiKind::OpenaiKey => "openai_key",
            PiiKind::AwsAccessKey => "aws_access_key",
            PiiKind::GithubToken => "github_token",
            PiiKind::GoogleApiKey => "google_api_key",
            PiiKind::SlackToken => "slack_token",
            PiiKind::StripeKey => "stripe_key",
            PiiKind::HuggingfaceToken => "huggingface_token",
            PiiKind::BearerToken => "bearer_token",
            PiiKind::Email => "email",
            PiiKind::CardNumber => "card_number",
            PiiKind::Ssn => "ssn",
            PiiKind::Ipv6 => "ipv6",
            PiiKind::Ipv4 => "ipv4",
            PiiKind::Phone => "phone",
        }
    }

    /// The kind with this name, if any.
    pub fn from_name(name: &str) -> Option<PiiKind> {
        PiiKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The candidate pattern; [`accept`] then checks each candidate.
    fn pattern(self) -> &'static str {
        match self {
            PiiKind::Jwt => r"(?-u)\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
            PiiKind::AnthropicKey => r"(?-u)\bsk-ant-[A-Za-z0-9_-]{20,}",
            PiiKind::OpenaiKey => r"(?-u)\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
            PiiKind::AwsAccessKey => r"(?-u)\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            PiiKind::GithubToken => {
                r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})\b"
            }
            PiiKind::GoogleApiKey => r"(?-u)\bAIza[A-Za-z0-9_-]{35}",
            PiiKind::SlackToken => r"(?-u)\bxox[abeoprs]-[A-Za-z0-9-]{10,}",
            PiiKind::StripeKey => r"(?-u)\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
            PiiKind::HuggingfaceToken => r"(?-u)\bhf_[A-Za-z0-9]{30,}\b",
            PiiKind::BearerToken => r"(?i-u)\bbearer[ \t]+[A-Za-z0-9._~+/-]{16,}=*",
            PiiKind::Email => r"(?i-u)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b",
            PiiKind::CardNumber => r"(?-u)\b[0-9](?:[ -]?[0-9]){12,18}\b",
            PiiKind::Ssn => r"(?-u)\b[0-9]{3}(?:-[0-9]{2}-| [0-9]{2} )[0-9]{4}\b",
            // Forms with an IPv4 tail come first so they win at the same start.
            PiiKind::Ipv6 => concat!(
                r"(?i-u)(?:[0-9a-f]{1,4}:){6}[0-9]{1,3}(?:\.[0-9]{1,3}){3}",
                r"|(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5})?::(?:[0-9a-f]{1,4}:){0,5}",
                r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}",
                r"|(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}",
                r"|(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?::(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?",
            ),
            PiiKind::Ipv4 => r"(?-u)\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}\b",
            PiiKind::Phone => concat!(
                r"(?-u)\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){2,6}",
                r"|(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}",
            ),
        }
    }
}

/// Redaction settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactionConfig {
    /// Built-in kinds to switch off, by [`PiiKind::name`] (e.g. `phone`).
    pub disabled_kinds: Vec<String>,
    /// Extra patterns, checked before the built-in kinds.
    pub extra_patterns: Vec<ExtraPattern>,
}

/// A configured pattern: every match of `regex` becomes `[REDACTED:<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPattern {
    /// Kind name for the marker and metrics: letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// Pattern in the syntax of the `regex` crate (no look-around).
    pub regex: String,
}

/// Why a [`RedactionConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// A configured pattern does not compile.
    #[error("redaction pattern {name:?} does not compile: {source}")]
    InvalidPattern {
        /// The pattern's configured name.
        name: String,
        /// The compiler's error.
        source: regex::Error,
    },
    /// A configured pattern's name is empty or has characters other than letters, digits, `_`, `-`, `.`.
    #[error("redaction pattern name {0:?} must be non-empty and use only letters, digits, '_', '-' and '.'")]
    InvalidName(String),
    /// `disabled_kinds` names no built-in kind.
    #[error("unknown redaction kind {0:?} in disabled_kinds")]
    UnknownKind(String),
    /// The patterns compile one by one but are too large together.
    #[error("the redaction patterns are too large together: {0}")]
    TooLarge(regex::Error),
}

/// Number of redactions per kind name, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactionCounts(BTreeMap<String, u64>);

impl RedactionCounts {
    /// Redactions of the kind named `kind`.
    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    /// Redactions of all kinds.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Whether nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(kind, count)` pairs in kind-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Adds the counts of `other`.
    pub fn merge(&mut self, other: &RedactionCounts) {
        for (kind, n) in other.iter() {
            *self.0.entry(kind.to_owned()).or_insert(0) += n;
        }
    }

    fn add(&mut self, kind: &str) {
        match self.0.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.0.insert(kind.to_owned(), 1);
            }
        }
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    marker: String,
    builtin: Option<PiiKind>,
    regex: Regex,
}

/// A compiled redactor; build once with [`Redactor::new`] and share.
#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Vec<Rule>,
    set: RegexSet,
}

impl Redactor {
    /// Compiles the built-in kinds not disabled plus the configured patterns.
    pub fn new(config: &RedactionConfig) -> Result<Redactor, RedactError> {
        let mut disabled = Vec::new();
        for name in &config.disabled_kinds {
            disabled.push(
                PiiKind::from_name(name).ok_or_else(|| RedactError::UnknownKind(name.clone()))?,
            );
        }
        let mut rules = Vec::new();
        for extra in &config.extra_patterns {
            let valid_name = !extra.name.is_empty()
                && extra
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !valid_name {
                return Err(RedactError::InvalidName(extra.name.clone()));
            }
            let regex = Regex::new(&extra.regex).map_err(|source| RedactError::InvalidPattern {
                name: extra.name.clone(),
                source,
            })?;
            rules.push(Rule::new(&extra.name, None, regex));
        }
        for kind in PiiKind::ALL {
            if !disabled.contains(&kind) {
                let regex = Regex::new(kind.pattern()).map_err(RedactError::TooLarge)?;
                rules.push(Rule::new(kind.name(), Some(kind), regex));
            }
        }
        let set =
            RegexSet::new(rules.iter().map(|r| r.regex.as_str())).map_err(RedactError::TooLarge)?;
        Ok(Redactor { rules, set })
    }

    /// The text with every match replaced by its marker; borrowed (no allocation) when nothing matches.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.redact_counting(text, &mut RedactionCounts::default())
    }

    /// Like [`Redactor::redact`], adding the redactions made to `counts`.
    pub fn redact_counting<'a>(&self, text: &'a str, counts: &mut RedactionCounts) -> Cow<'a, str> {
        let spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, (end, rule)) in spans {
            let rule = &self.rules[rule];
            out.push_str(&text[last..start]);
            out.push_str(&rule.marker);
            counts.add(&rule.name);
            last = end;
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    /// Redacts an event's prompt and response text, error messages and string metadata values (nested ones too).
    pub fn redact_event(&self, event: &mut Event) -> RedactionCounts {
        let mut counts = RedactionCounts::default();
        let texts = [&mut event.prompt_text, &mut event.response_text];
        for text in texts.into_iter().flatten() {
            self.redact_string(text, &mut counts);
        }
        for error in &mut event.errors {
            self.redact_string(error, &mut counts);
        }
        for value in event.metadata.values_mut() {
            self.redact_value(value, &mut counts);
        }
        counts
    }

    /// Redacts a string in place.
    fn redact_string(&self, text: &mut String, counts: &mut RedactionCounts) {
        let redacted = match self.redact_counting(text, counts) {
            Cow::Borrowed(_) => None,
            Cow::Owned(new) => Some(new),
        };
        if let Some(new) = redacted {
            *text = new;
        }
    }

    /// Redacts every string inside a JSON value in place.
    fn redact_value(&self, value: &mut Value, counts: &mut RedactionCounts) {
        match value {
            Value::String(text) => self.redact_string(text, counts),
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v, counts)),
            Value::Object(fields) => fields
                .values_mut()
                .for_each(|v| self.redact_value(v, counts)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// The accepted, non-overlapping matches: start → (end, rule index).
    fn spans(&self, text: &str) -> BTreeMap<usize, (usize, usize)> {
        let mut accepted: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for index in self.set.matches(text).iter() {
            let rule = &self.rules[index];
            let mut at = 0;
            while at <= text.len() {
                let Some(m) = rule.regex.find_at(text, at) else {
                    break;
                };
                let span = match rule.builtin {
                    Some(kind) => accept(kind, text, m.start(), m.end()),
                    None => Some((m.start(), m.end())),
                };
                match span {
                    Some((start, end)) if start < end => {
                        let overlaps = accepted
                            .range(..end)
                            .next_back()
                            .is_some_and(|(_, (prev_end, _))| *prev_end > start);
                        if !overlaps {
                            accepted.insert(start, (end, index));
                        }
                        at = m.end();
                    }
                    _ => at = next_char(text, m.start()),
                }
            }
        }
        accepted
    }
}

impl Rule {
    fn new(name: &str, builtin: Option<PiiKind>, regex: Regex) -> Rule {
        Rule {
            name: name.to_owned(),
            marker: format!("[REDACTED:{name}]"),
            builtin,
            regex,
        }
    }
}

/// The byte offset just after the character at `at` (past the end when `at` is the end).
fn next_char(text: &str, at: usize) -> usize {
    at + text[at..].chars().next().map_or(1, char::len_utf8)
}

/// Checks a candidate of a built-in kind; returns the span to redact.
fn accept(kind: PiiKind, text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let found = &text[start..end];
    let ok = match kind {
        PiiKind::OpenaiKey => looks_random(&found[3..]),
        PiiKind::GoogleApiKey => !text[end..]
            .bytes()
            .next()
            .is_some_and(|b| is_word(b) || b == b'-'),
        PiiKind::BearerToken => {
            let token = found[6..].trim_start_matches([' ', '\t']);
            let has_digit = token.bytes().any(|b| b.is_ascii_digit());
            let has_letter = token.bytes().any(|b| b.is_ascii_alphabetic());
            return (has_digit && has_letter).then_some((end - token.len(), end));
        }
        PiiKind::CardNumber => standalone(text, start, end, b".-") && card_number_ok(found),
        PiiKind::Ssn => standalone(text, start, end, b".-") && ssn_ok(found),
        PiiKind::Phone => standalone(text, start, end, b".-") && phone_ok(found),
        PiiKind::Ipv4 => standalone(text, start, end, b".") && ipv4_ok(found),
        PiiKind::Ipv6 => {
            standalone(text, start, end, b".:")
                && !text[end..].starts_with(':')
                && !text[..start].ends_with(':')
                && found.bytes().any(|b| b.is_ascii_hexdigit())
                && found.parse::<Ipv6Addr>().is_ok()
        }
        PiiKind::Jwt
        | PiiKind::AnthropicKey
        | PiiKind::AwsAccessKey
        | PiiKind::GithubToken
        | PiiKind::SlackToken
        | PiiKind::StripeKey
        | PiiKind::HuggingfaceToken
        | PiiKind::Email => true,
    };
    ok.then_some((start, end))
}

/// ASCII letter, digit or `_`.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether a numeric candidate is not glued to a longer token: no word character next
/// to it, and no joiner (`.`, `-`, ...) that continues a digit sequence on either side.
fn standalone(text: &str, start: usize, end: usize, joiners: &[u8]) -> bool {
    let bytes = text.as_bytes();
    let glued = |neighbour: Option<&u8>, beyond: Option<&u8>| match neighbour {
        None => false,
        Some(&b) => is_word(b) || (joiners.contains(&b) && beyond.is_some_and(u8::is_ascii_digit)),
    };
    let before = |back: usize| start.checked_sub(back).and_then(|i| bytes.get(i));
    !glued(before(1), before(2)) && !glued(bytes.get(end), bytes.get(end + 1))
}

/// Whether a key body has upper- and lower-case letters and digits, as random keys do (prose does not).
fn looks_random(body: &str) -> bool {
    body.bytes().any(|b| b.is_ascii_uppercase())
        && body.bytes().any(|b| b.is_ascii_lowercase())
        && body.bytes().any(|b| b.is_ascii_digit())
}

/// The ASCII digits of a candidate as numbers.
fn digits(found: &str) -> Vec<u8> {
    found
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// Luhn check and issuer plausibility: first digit 1 only for 15-digit (UATP) numbers,
/// 2–6 for 14–19 digits, 4 also for 13 digits (old Visa); 0, 7, 8, 9 are not card
/// prefixes. This keeps millisecond/microsecond timestamps and ISBNs out.
fn card_number_ok(found: &str) -> bool {
    let digits = digits(found);
    let plausible = match digits.first() {
        Some(1) => digits.len() == 15,
        Some(4) => true,
        Some(2 | 3 | 5 | 6) => digits.len() >= 14,
        _ => false,
    };
    plausible && luhn(&digits)
}

/// Whether `digits` (0–9 each) pass the Luhn checksum of payment card numbers.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// SSN rules: area not 000, 666 or 900–999; group not 00; serial not 0000.
fn ssn_ok(found: &str) -> bool {
    let d = digits(found);
    let number = |range: std::ops::Range<usize>| {
        d[range]
            .iter()
            .fold(0u32, |acc, &x| acc * 10 + u32::from(x))
    };
    let (area, group, serial) = (number(0..3), number(3..5), number(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Digit counts: 8–15 for international numbers (E.164), 10–11 for US ones.
fn phone_ok(found: &str) -> bool {
    let n = digits(found).len();
    if found.starts_with('+') {
        (8..=15).contains(&n)
    } else {
        (10..=11).contains(&n)
    }
}

/// Every octet 0–255.
fn ipv4_ok(found: &str) -> bool {
    found.split('.').all(|octet| octet.parse::<u8>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::new(&RedactionConfig::default()).unwrap()
    }

    #[test]
    fn clean_text_is_borrowed() {
        let r = redactor();
        let text = "The build finished in 12.5 s on 2024-06-10; see ticket 4521.";
        assert!(matches!(r.redact(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn counts_per_kind() {
        let r = redactor();
        let mut counts = RedactionCounts::default();
        let out = r.redact_counting(
            "mail a@example.com or b@example.org from 10.0.0.1",
            &mut counts,
        );
        assert_eq!(
            out,
            "mail [REDACTED:email] or [REDACTED:email] from [REDACTED:ipv4]"
        );
        assert_eq!(counts.get("email"), 2);
        assert_eq!(counts.get("ipv4"), 1);
        assert_eq!(counts.get("phone"), 0);
        assert_eq!(counts.total(), 3);
        let mut all = RedactionCounts::default();
        all.merge(&counts);
        all.merge(&counts);
        assert_eq!(all.iter().collect::<Vec<_>>(), [("email", 4), ("ipv4", 2)]);
    }

    #[test]
    fn configured_patterns_and_disabled_kinds() {
        let config = RedactionConfig {
            disabled_kinds: vec!["ipv4".into()],
            extra_patterns: vec![ExtraPattern {
                name: "employee_id".into(),
                regex: r"\bEMP-[0-9]{6}\b".into(),
            }],
        };
        let r = Redactor::new(&config).unwrap();
        assert_eq!(
            r.redact("EMP-004211 logged in from 10.0.0.1"),
            "[REDACTED:employee_id] logged in from 10.0.0.1"
        );
    }

    #[test]
    fn bad_configuration_is_a_typed_error() {
        let bad_regex = RedactionConfig {
            extra_patterns: vec![ExtraPattern {
                name: "x".into(),
                regex: "(unclosed".into(),
            }],
            ..RedactionConfig::default()
        };
        let err = Redactor::new(&bad_regex).unwrap_err();
        assert!(matches!(&err, RedactError::InvalidPattern { name, .. } if name == "x"));
        assert!(err
            .to_string()
            .starts_with("redaction pattern \"x\" does not compile"));

        let bad_name = RedactionConfig {
            extra_patterns: vec![ExtraPattern {
                name: "a b]".into(),
                regex: "x".into(),
            }],
            ..RedactionConfig::default()
        };
        assert!(matches!(
            Redactor::new(&bad_name),
            Err(RedactError::InvalidName(_))
        ));

        let unknown = RedactionConfig {
            disabled_kinds: vec!["passport".into()],
            ..RedactionConfig::default()
        };
        assert!(
            matches!(Redactor::new(&unknown), Err(RedactError::UnknownKind(k)) if k == "passport")
        );
    }

    #[test]
    fn events_are_redacted_everywhere_text_lives() {
        let r = redactor();
        let mut event = Event {
            prompt_text: Some("I am jane@corp.com".into()),
            response_text: Some("Noted.".into()),
            errors: vec!["401 for key sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345".into()],
            metadata: [
                ("client_ip".to_owned(), json!("192.168.1.20")),
                (
                    "contacts".to_owned(),
                    json!({"phones": ["+44 20 7946 0958"], "n": 2}),
                ),
            ]
            .into_iter()
            .collect(),
            ..Event::default()
        };
        let counts = r.redact_event(&mut event);
        assert_eq!(event.prompt_text.as_deref(), Some("I am [REDACTED:email]"));
        assert_eq!(event.response_text.as_deref(), Some("Noted."));
        assert_eq!(event.errors, ["401 for key [REDACTED:anthropic_key]"]);
        assert_eq!(event.metadata["client_ip"], "[REDACTED:ipv4]");
        assert_eq!(
            event.metadata["contacts"],
            json!({"phones": ["[REDACTED:phone]"], "n": 2})
        );
        assert_eq!(counts.total(), 4);
    }

    #[test]
    fn luhn_and_ssn_rules() {
        assert!(luhn(&digits("4111111111111111")));
        assert!(!luhn(&digits("4111111111111112")));
        assert!(card_number_ok("378282246310005"));
        assert!(!card_number_ok("1718020800123"), "ms timestamp");
        assert!(ssn_ok("123-45-6789"));
        assert!(!ssn_ok("666-45-6789"));
        assert!(!ssn_ok("912-45-6789"));
        assert!(!ssn_ok("123-00-6789"));
        assert!(!ssn_ok("123-45-0000"));
    }
}
