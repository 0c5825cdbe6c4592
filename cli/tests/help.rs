//! What `sentinel` says about itself: `--help` with examples for every command, shell
//! completions and the man page.

use std::process::{Command, Output};

fn sentinel(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(args)
        .output()
        .expect("sentinel runs");
    assert!(output.status.success(), "{args:?}: {output:?}");
    output
}

fn text(args: &[&str]) -> String {
    String::from_utf8(sentinel(args).stdout).expect("UTF-8")
}

/// Every command, as the words after `sentinel`.
const COMMANDS: [&[&str]; 18] = [
    &["node"],
    &["router"],
    &["dev"],
    &["produce"],
    &["anomalies"],
    &["baselines"],
    &["telemetry"],
    &["incidents"],
    &["incidents", "show"],
    &["incidents", "ack"],
    &["incidents", "resolve"],
    &["silence", "add"],
    &["silence", "list"],
    &["silence", "expire"],
    &["cluster", "status"],
    &["cluster", "decommission"],
    &["completions"],
    &["man"],
];

#[test]
fn every_command_has_help_with_an_example() {
    let top = text(&["--help"]);
    for command in COMMANDS {
        assert!(
            top.contains(command[0]),
            "{} not listed:\n{top}",
            command[0]
        );
        let help = text(&[command, &["--help"]].concat());
        assert!(
            help.contains(&format!("sentinel {}", command.join(" "))),
            "no example for `{}`:\n{help}",
            command.join(" ")
        );
    }
}

#[test]
fn completions_cover_every_command_in_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = text(&["completions", shell]);
        for command in COMMANDS {
            assert!(
                script.contains(command[command.len() - 1]),
                "{shell} completions lack {command:?}"
            );
        }
    }
    assert!(text(&["completions", "bash"]).contains("complete -F"));
}

#[test]
fn the_man_page_is_roff_and_one_page_per_command_can_be_written() {
    let page = text(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH sentinel"),
        "{page}"
    );
    assert!(page.contains("produce") && page.contains("anomalies"));
    let dir = tempfile::tempdir().expect("temp dir");
    sentinel(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    for name in ["sentinel.1", "sentinel-dev.1", "sentinel-produce.1"] {
        assert!(dir.path().join(name).exists(), "{name} not written");
    }
}
