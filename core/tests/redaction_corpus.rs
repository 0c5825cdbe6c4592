//! Redaction corpus: what must be redacted (with the exact output) and what must be left alone.

use std::borrow::Cow;

use sentinel_core::redact::{ExtraPattern, RedactionConfig, RedactionCounts, Redactor};

fn redactor() -> Redactor {
    Redactor::new(&RedactionConfig::default()).expect("built-in patterns compile")
}

/// (input, exact expected output)
const POSITIVE: &[(&str, &str)] = &[
    // emails
    ("Contact john.doe@example.com for access.", "Contact [REDACTED:email] for access."),
    ("Reply to JANE+news@Mail.Example.CO.UK!", "Reply to [REDACTED:email]!"),
    ("<ops-team_2@corp-mail.io>", "<[REDACTED:email]>"),
    // phones
    ("Call me at (415) 555-2671 tomorrow", "Call me at [REDACTED:phone] tomorrow"),
    ("US number 415-555-2671.", "US number [REDACTED:phone]."),
    ("dots 415.555.2671 work too", "dots [REDACTED:phone] work too"),
    ("toll free 1-800-555-0199", "toll free [REDACTED:phone]"),
    ("intl +1 415 555 2671", "intl [REDACTED:phone]"),
    ("London +44 20 7946 0958", "London [REDACTED:phone]"),
    ("Berlin: +49 (0)30 123456", "Berlin: [REDACTED:phone]"),
    ("Mumbai +91-98765-43210 ok", "Mumbai [REDACTED:phone] ok"),
    ("Paris +33 1 23 45 67 89", "Paris [REDACTED:phone]"),
    ("compact +14155552671", "compact [REDACTED:phone]"),
    // payment cards (Luhn-valid)
    ("card 4111 1111 1111 1111 exp 12/27", "card [REDACTED:card_number] exp 12/27"),
    ("card 4242-4242-4242-4242", "card [REDACTED:card_number]"),
    ("mc 5555555555554444", "mc [REDACTED:card_number]"),
    ("amex 3782 822463 10005", "amex [REDACTED:card_number]"),
    ("discover 6011111111111117.", "discover [REDACTED:card_number]."),
    ("mc2 2223003122003222", "mc2 [REDACTED:card_number]"),
    ("old visa 4222222222222", "old visa [REDACTED:card_number]"),
    // SSNs
    ("SSN 123-45-6789 on file", "SSN [REDACTED:ssn] on file"),
    ("ssn: 078-05-1120", "ssn: [REDACTED:ssn]"),
    ("spaced 219 09 9999", "spaced [REDACTED:ssn]"),
    // IPs
    ("from 192.168.0.1 via 8.8.8.8", "from [REDACTED:ipv4] via [REDACTED:ipv4]"),
    ("dial 10.0.0.1:8080 now", "dial [REDACTED:ipv4]:8080 now"),
    ("range 10.0.0.1-10.0.0.255", "range [REDACTED:ipv4]-[REDACTED:ipv4]"),
    ("v6 2001:db8::8a2e:370:7334 seen", "v6 [REDACTED:ipv6] seen"),
    (
        "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "full [REDACTED:ipv6]",
    ),
    ("link-local fe80::1%eth0", "link-local [REDACTED:ipv6]%eth0"),
    ("loopback ::1 only", "loopback [REDACTED:ipv6] only"),
    ("url http://[2001:db8::1]:443/", "url http://[[REDACTED:ipv6]]:443/"),
    ("mapped ::ffff:192.0.2.128", "mapped [REDACTED:ipv6]"),
    // provider keys and tokens
    (
        "key=sk-Zx9Lm2Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm123456",
        "key=[REDACTED:openai_key]",
    ),
    (
        "OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbC-dEf",
        "OPENAI_API_KEY=[REDACTED:openai_key]",
    ),
    (
        "use sk-ant-api03-Xy7zAb9cDe1fGh3iJk5lMn7oPq9rSt1uVw3xYz5AbC7dEf-gh_ij please",
        "use [REDACTED:anthropic_key] please",
    ),
    (
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "aws_access_key_id = [REDACTED:aws_access_key]",
    ),
    ("sts ASIAY34FZKBOKMUTVV7A.", "sts [REDACTED:aws_access_key]."),
    (
        "token ghp_1234567890abcdefghijklmnopqrstuvwxyz",
        "token [REDACTED:github_token]",
    ),
    (
        "pat github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123",
        "pat [REDACTED:github_token]",
    ),
    (
        "maps key AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe in url",
        "maps key [REDACTED:google_api_key] in url",
    ),
    (
        "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "slack [REDACTED:slack_token]",
    ),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe [REDACTED:stripe_key]"),
    ("restricted rk_live_51H8abcDEFghiJKLmnoPQR", "restricted [REDACTED:stripe_key]"),
    (
        "HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
        "HF_TOKEN=[REDACTED:huggingface_token]",
    ),
    (
        "Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543",
        "Authorization: Bearer [REDACTED:bearer_token]",
    ),
    (
        "authorization: bearer ya29.a0AfH6SMBx3kLq9-ZpQ_7",
        "authorization: bearer [REDACTED:bearer_token]",
    ),
    (
        "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c end",
        "jwt [REDACTED:jwt] end",
    ),
    (
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJlLWJ5dGVz",
        "Bearer [REDACTED:jwt]",
    ),
    // several kinds in one text
    (
        "Hi, I'm Ann (ann@site.org, +1 415 555 2671); card 4111111111111111, IP 172.16.5.4.",
        "Hi, I'm Ann ([REDACTED:email], [REDACTED:phone]); card [REDACTED:card_number], IP [REDACTED:ipv4].",
    ),
    ("unicode café ✓ bob@example.fr → done", "unicode café ✓ [REDACTED:email] → done"),
];

/// Texts that must come back unchanged (and borrowed).
const NEGATIVE: &[&str] = &[
    "version 1.2.3.4.5 released",
    "build v1.2.3.4 is out",
    "room 10.20.30.40.50",
    "invalid ip 999.999.999.999 and 256.1.1.1",
    "timestamp 2024-06-10T12:30:45Z",
    "log line 2024-06-10 12:30:45.123 INFO started",
    "epoch ms 1718020800123",
    "epoch us 1718020800123456",
    "epoch ns 1718020800123456789",
    "order number 123456789012",
    "order #ORD-2024-000123 shipped",
    "long order 4111111111111111111111",
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    "uuid 12345678-1234-1234-1234-123456789012",
    "price $1,234.56 or €99.99",
    "percent +12.5% and -3.2%",
    "luhn fail 4111 1111 1111 1112",
    "luhn fail 5555-5555-5555-4445",
    "not a card 1234 5678 9012",
    "ISBN 978-3-16-148410-0",
    "task-based desk-top risk-free whisk-ey ask-me-anything",
    "pip install sk-learn",
    "The sk-this-is-a-very-long-hyphenated-phrase-example is prose",
    "sk_test in prose, sk_live_short",
    "hf_hub_download('gpt2')",
    "ghp_short and xoxb-short and AKIAshort",
    "bearer of bad news",
    "Bearer token missing; Bearer abcdefghijklmnopqrstuvwxyz",
    "time 12:30:45 and ratio 1:2:3",
    "MAC 00:1a:2b:3c:4d:5e",
    "rust std::net::Ipv6Addr and Foo::bar()",
    "area code 123-456-7890 is not valid NANP",
    "extension 555-0199",
    "zip 94105-1234",
    "ssn-like 000-12-3456 666-12-3456 900-12-3456",
    "ssn-like 123-00-4567 and 123-45-0000",
    "user@localhost has no domain",
    "@mention and #hashtag",
    "git sha 3f786850e387550fdab836ed7e6dc881de23001b",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "base64 aGVsbG8gd29ybGQ=",
    "coordinates 37.7749,-122.4194",
    "temperature 98.6 and 37.0",
    "date 10/06/2024 12:30",
    "duration 01:02:03.456",
    "the years 2024 and 2025",
    "phone-ish +1.5% growth",
];

#[test]
fn positive_cases_are_redacted_exactly() {
    let r = redactor();
    let mut failures = Vec::new();
    for (input, expected) in POSITIVE {
        let got = r.redact(input);
        if got != *expected {
            failures.push(format!(
                "input:    {input}\nexpected: {expected}\ngot:      {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(POSITIVE.len() >= 40);
}

#[test]
fn negative_cases_are_left_alone() {
    let r = redactor();
    let mut failures = Vec::new();
    for input in NEGATIVE {
        match r.redact(input) {
            Cow::Borrowed(text) if text == *input => {}
            other => failures.push(format!("input: {input}\ngot:   {other}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(NEGATIVE.len() >= 40);
}

#[test]
fn counts_follow_the_kinds_redacted() {
    let r = redactor();
    let mut counts = RedactionCounts::default();
    for (input, _) in POSITIVE {
        r.redact_counting(input, &mut counts);
    }
    assert_eq!(counts.get("email"), 5);
    assert_eq!(counts.get("card_number"), 8);
    assert_eq!(counts.get("jwt"), 2);
    assert_eq!(counts.get("ipv4"), 6);
}

#[test]
fn configured_patterns_take_precedence() {
    let config = RedactionConfig {
        extra_patterns: vec![
            ExtraPattern {
                name: "ticket".into(),
                regex: r"\bTCK-[0-9]{5}\b".into(),
            },
            ExtraPattern {
                name: "internal_phone".into(),
                regex: r"\bx[0-9]{4}\b".into(),
            },
        ],
        ..RedactionConfig::default()
    };
    let r = Redactor::new(&config).unwrap();
    assert_eq!(
        r.redact("TCK-00042 from bob@example.com, ext x4821"),
        "[REDACTED:ticket] from [REDACTED:email], ext [REDACTED:internal_phone]"
    );
}
