//! Operators' commands: `sentinel incidents` (list, show, ack, resolve) and `sentinel
//! silence` (add, list, expire).

use clap::{Args, Subcommand};
use sentinel_proto::v1::{
    IncidentChange, IncidentRef, IncidentsQuery, NewSilence, SilenceRef, SilencesQuery,
};
use sentinel_router::query::MAX_INCIDENTS_LIMIT;
use serde_json::Value;

use sentinel_proto::json::from_struct;

use super::output;
use super::{
    flag_value, now_ms, parse_duration, print, Client, ClientArgs, Consistency, Failure, Output,
    Page,
};

/// An incident status.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Status {
    /// Still going on.
    Open,
    /// Over.
    Resolved,
}

/// Arguments of `sentinel incidents`: the list, or one of its subcommands.
#[derive(Args)]
pub struct IncidentsArgs {
    /// Show, acknowledge or resolve one incident instead of listing them.
    #[command(subcommand)]
    command: Option<IncidentCommand>,
    /// Only incidents in this state.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Only incidents opened within this many hours.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// At most this many, the newest opening first (1-1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_INCIDENTS_LIMIT)))]
    limit: u32,
    /// The next page: `next_cursor` of the previous one (printed after a table with more
    /// pages).
    #[arg(long)]
    cursor: Option<String>,
    /// How fresh the read must be [router default: linearizable].
    #[arg(long, value_enum)]
    consistency: Option<Consistency>,
    /// Where and how to ask.
    #[command(flatten)]
    client: ClientArgs,
}

/// `sentinel incidents` subcommands.
#[derive(Subcommand)]
pub enum IncidentCommand {
    /// Shows one incident: its impact, who acknowledged or resolved it, and its signals.
    #[command(after_help = help!(
        "sentinel incidents show 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03",
        "sentinel incidents show 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03 --output json",
    ))]
    Show {
        /// The incident's id (`sentinel incidents` lists them).
        id: String,
    },
    /// Acknowledges an open incident: it stays open, and sends no more escalation
    /// notifications.
    #[command(after_help = help!(
        "sentinel incidents ack 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03 --by alice --comment 'looking into it'",
    ))]
    Ack(ChangeArgs),
    /// Resolves an open incident by hand (resolution `manual`); receivers get its resolve
    /// notification.
    #[command(after_help = help!(
        "sentinel incidents resolve 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03 --by alice --comment 'rolled back'",
    ))]
    Resolve(ChangeArgs),
}

/// Arguments of `sentinel incidents ack|resolve`.
#[derive(Args)]
pub struct ChangeArgs {
    /// The incident's id (`sentinel incidents --status open` lists them).
    id: String,
    /// Who does it.
    #[arg(long)]
    by: String,
    /// Why.
    #[arg(long, default_value = "")]
    comment: String,
}

/// `sentinel silence` subcommands.
#[derive(Subcommand)]
pub enum SilenceCommand {
    /// Adds a silence: notifications of matching incidents are kept back until it ends
    /// (a matcher left out matches every value).
    #[command(after_help = help!(
        "sentinel silence add --service checkout --duration 2h --by alice --comment 'deploy'",
        "sentinel silence add --model gpt-4o --type latency_spike --until 2026-03-01T18:00:00Z --by bob",
    ))]
    Add(SilenceArgs),
    /// Lists silences, active or not (until retention drops them).
    #[command(after_help = help!(
        "sentinel silence list --active",
        "sentinel silence list --output json",
    ))]
    List {
        /// Only silences active now.
        #[arg(long)]
        active: bool,
        /// Where and how to ask.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ends a silence now.
    #[command(after_help = help!(
        "sentinel silence expire 6f1d0c2a-93b4-4e1f-a7c5-2b8d9e0f1a34",
    ))]
    Expire {
        /// The silence's id (`sentinel silence list` lists them).
        id: String,
        /// Where and how to ask.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Arguments of `sentinel silence add`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("end").required(true).args(["duration", "until"])))]
pub struct SilenceArgs {
    /// Only incidents of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only incidents of this model.
    #[arg(long)]
    model: Option<String>,
    /// Only incidents of this type (e.g. `latency_spike`, `error_rate_increase`).
    #[arg(long = "type", value_name = "TYPE")]
    anomaly_type: Option<String>,
    /// How long it lasts from now (`90s`, `30m`, `2h`, `7d`, `1h30m`).
    #[arg(long, value_parser = duration_parser, value_name = "DURATION")]
    duration: Option<std::time::Duration>,
    /// When it ends (RFC 3339, e.g. `2026-03-01T18:00:00Z`).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Who sets it.
    #[arg(long)]
    by: String,
    /// Why.
    #[arg(long, default_value = "")]
    comment: String,
    /// Where and how to ask.
    #[command(flatten)]
    client: ClientArgs,
}

/// `--duration`: a duration above zero.
fn duration_parser(text: &str) -> Result<std::time::Duration, String> {
    parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a duration above zero (90s, 30m, 2h, 7d, 1h30m)"))
}

/// Runs `sentinel incidents`.
pub async fn incidents(args: IncidentsArgs) -> Result<(), Failure> {
    let mut client = Client::connect(&args.client).await?;
    let format = args.client.output;
    let incident = match args.command {
        None => {
            let query = IncidentsQuery {
                status: flag_value(args.status),
                service: args.service.unwrap_or_default(),
                model: args.model.unwrap_or_default(),
                hours: Some(args.hours),
                limit: Some(args.limit),
                consistency: flag_value(args.consistency),
                cursor: args.cursor.unwrap_or_default(),
            };
            let reply = client
                .api
                .incidents(client.request(query))
                .await?
                .into_inner();
            return Page::of("incidents", "no incidents", reply)
                .print(format, output::incidents_table);
        }
        Some(IncidentCommand::Show { id }) => {
            let reference = IncidentRef {
                incident_id: id,
                consistency: flag_value(args.consistency),
            };
            client.api.get_incident(client.request(reference)).await?
        }
        Some(IncidentCommand::Ack(change)) => {
            let request = client.request(incident_change(change));
            client.api.acknowledge_incident(request).await?
        }
        Some(IncidentCommand::Resolve(change)) => {
            let request = client.request(incident_change(change));
            client.api.resolve_incident(request).await?
        }
    };
    let incident = from_struct(incident.into_inner());
    match format {
        Output::Json => print(incident),
        Output::Table => print(output::incident_details(&incident)),
    }
}

fn incident_change(args: ChangeArgs) -> IncidentChange {
    IncidentChange {
        incident_id: args.id,
        by: args.by,
        comment: args.comment,
    }
}

/// Runs `sentinel silence`.
pub async fn silence(command: SilenceCommand) -> Result<(), Failure> {
    let (silence, format) = match command {
        SilenceCommand::List {
            active,
            client: args,
        } => {
            let mut client = Client::connect(&args).await?;
            let query = SilencesQuery {
                active,
                consistency: String::new(),
            };
            let reply = client
                .api
                .silences(client.request(query))
                .await?
                .into_inner();
            return Page::of("silences", "no silences", reply).print(args.output, |silences| {
                output::silences_table(silences, now_ms())
            });
        }
        SilenceCommand::Add(args) => {
            let mut client = Client::connect(&args.client).await?;
            let new = NewSilence {
                service: args.service.unwrap_or_default(),
                model: args.model.unwrap_or_default(),
                anomaly_type: args.anomaly_type.unwrap_or_default(),
                starts_at: String::new(),
                ends_at: args.until.unwrap_or_default(),
                duration_s: args.duration.map(|d| d.as_secs_f64()),
                created_by: args.by,
                comment: args.comment,
            };
            let reply = client.api.add_silence(client.request(new)).await?;
            (reply.into_inner(), args.client.output)
        }
        SilenceCommand::Expire { id, client: args } => {
            let mut client = Client::connect(&args).await?;
            let reference = SilenceRef { silence_id: id };
            let reply = client.api.expire_silence(client.request(reference)).await?;
            (reply.into_inner(), args.output)
        }
    };
    let silence: Value = from_struct(silence);
    match format {
        Output::Json => print(silence),
        Output::Table => print(output::silences_table(&[silence], now_ms())),
    }
}
