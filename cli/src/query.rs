//! The query client: `sentinel anomalies`, `baselines`, `telemetry`, `incidents`,
//! `silence` and `cluster`, asking a router's public gRPC API (`sentinel.v1.Sentinel`) and
//! printing tables or JSON.

mod output;

use sentinel_core::anomaly::now_ms;
use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use sentinel_proto::v1::sentinel_client::SentinelClient;
use sentinel_proto::v1::{
    AnomaliesQuery, BaselinesQuery, ClusterStatusQuery, DecommissionQuery, QueryReply,
    TelemetryQuery,
};
use sentinel_router::grpc::DETAILS_TRAILER;
use sentinel_router::query::{MAX_BASELINES_LIMIT, MAX_LIMIT};
use serde_json::{json, Value};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use sentinel_proto::json::from_struct;

/// How long connecting to the router may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take (the router gives up after `http.request_timeout_ms`, 60 s
/// by default).
const CALL_TIMEOUT: Duration = Duration::from_secs(65);
/// Largest answer accepted (a telemetry page of 10,000 records is several MiB).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Pause between two polls of `anomalies --follow`.
const FOLLOW_PERIOD: Duration = Duration::from_secs(1);

/// The `after_help` of a query command: its examples and the exit statuses.
macro_rules! help {
    ($($example:literal),+ $(,)?) => {
        concat!(
            "Examples:\n",
            $("  ", $example, "\n",)+
            "\nExit status:\n",
            "  0  success\n",
            "  1  any other error\n",
            "  2  usage error or invalid argument (also the router's INVALID_ARGUMENT)\n",
            "  3  router unreachable, UNAVAILABLE or DEADLINE_EXCEEDED\n",
            "  4  API key missing or refused (UNAUTHENTICATED, PERMISSION_DENIED)\n",
            "  5  not found (NOT_FOUND)"
        )
    };
}

mod operate;

/// The commands of the query client.
#[derive(Subcommand)]
pub enum QueryCommand {
    /// Lists anomalies, newest first, or follows them as they are raised (`--follow`).
    #[command(after_help = help!(
        "sentinel anomalies --severity high --since 2h",
        "sentinel anomalies --service checkout --model gpt-4o --output json",
        "sentinel anomalies --follow --endpoint http://router:7500",
    ))]
    Anomalies(AnomaliesArgs),
    /// Shows baselines: events, error rate and per-metric statistics of a service and
    /// model (or of every key).
    #[command(after_help = help!(
        "sentinel baselines --service checkout --model gpt-4o",
        "sentinel baselines --output json --consistency stale",
    ))]
    Baselines(BaselinesArgs),
    /// Lists telemetry records, one page at a time, in (service, model, time) order.
    #[command(after_help = help!(
        "sentinel telemetry --service checkout --model gpt-4o --since 30m --limit 20",
        "sentinel telemetry --output json --limit 1000 --cursor <next_cursor of the last page>",
    ))]
    Telemetry(TelemetryArgs),
    /// Lists incidents, newest opening first, or shows, acknowledges or resolves one.
    #[command(after_help = help!(
        "sentinel incidents --status open --service checkout",
        "sentinel incidents --hours 72 --output json",
        "sentinel incidents show 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03",
        "sentinel incidents ack 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03 --by alice",
        "sentinel incidents resolve 0b6f3c1e-5a7d-8e2f-9c41-7d2a6b8e1f03 --by alice --comment 'rolled back'",
    ))]
    Incidents(operate::IncidentsArgs),
    /// Adds, lists or expires silences, which keep back the notifications of matching
    /// incidents.
    #[command(after_help = help!(
        "sentinel silence add --service checkout --duration 2h --by alice",
        "sentinel silence list --active",
        "sentinel silence expire 6f1d0c2a-93b4-4e1f-a7c5-2b8d9e0f1a34",
    ))]
    Silence {
        /// What to do.
        #[command(subcommand)]
        command: operate::SilenceCommand,
    },
    /// Shows the cluster (nodes, shards, leaders, replication lag) or decommissions a node.
    #[command(after_help = help!(
        "sentinel cluster status",
        "sentinel cluster decommission 3",
    ))]
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

/// `sentinel cluster` commands.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Nodes (address, state, shards led and held) and shards (leader, term, replicas
    /// with their lag behind the leader).
    #[command(after_help = help!(
        "sentinel cluster status",
        "sentinel cluster status --output json | jq '.shards[] | select(.leader == null)'",
    ))]
    Status {
        /// Where and how to ask.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Starts draining a node: its shard replicas move to the other nodes, then it leaves
    /// the cluster. Prints how many shards still have a replica on it; run it again to
    /// follow the drain (0 once drained; exit status 5 once the node has left).
    #[command(after_help = help!(
        "sentinel cluster decommission 3",
        "sentinel cluster decommission 3 --output json",
    ))]
    Decommission {
        /// Id of the node to drain (`sentinel cluster status` lists them).
        node_id: u64,
        /// Where and how to ask.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Where the router is, how to present the key, and how to print answers (global: a
/// subcommand takes them too).
#[derive(Args)]
pub struct ClientArgs {
    /// The router's gRPC API (`grpc.listen` of the router).
    #[arg(
        long,
        global = true,
        env = "SENTINEL_ENDPOINT",
        default_value = "http://127.0.0.1:7500",
        value_name = "URL"
    )]
    endpoint: String,
    /// API key, sent as `authorization: Bearer <key>` (needed when the router has
    /// `auth.api_keys`).
    #[arg(
        long,
        global = true,
        env = "SENTINEL_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    /// `table` for people, `json` for scripts (one document; JSON lines with `--follow`).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// How answers are printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

/// An anomaly severity.
#[derive(Clone, Copy, ValueEnum)]
enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// How fresh a read must be.
#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    /// Through each shard's leader after it confirmed its leadership.
    Linearizable,
    /// From any replica (cheaper; may lag by a few entries).
    Stale,
}

/// Arguments of `sentinel anomalies`.
#[derive(Args)]
pub struct AnomaliesArgs {
    /// Only anomalies of this severity.
    #[arg(long, value_enum)]
    severity: Option<Severity>,
    /// Only anomalies since this long ago (`90s`, `30m`, `2h`, `7d`, `1h30m`) or since
    /// this RFC 3339 time (`2026-03-01T12:00:00Z`), by event time.
    #[arg(long, default_value = "24h", value_parser = parse_since, value_name = "DURATION|TIME")]
    since: Since,
    /// At most this many, the newest (1-10000).
    #[arg(long, default_value_t = 100, value_parser = limit_parser())]
    limit: u32,
    /// Only anomalies of this service (picked by this command among the newest 10,000).
    #[arg(long)]
    service: Option<String>,
    /// Only anomalies of this model (picked by this command among the newest 10,000).
    #[arg(long)]
    model: Option<String>,
    /// Keep asking every second and print each new anomaly once (oldest first), until
    /// Ctrl-C.
    #[arg(long, short, conflicts_with = "cursor")]
    follow: bool,
    /// The next page: `next_cursor` of the previous one (printed after a table with more
    /// pages). The cursor fixes the look-back of the first page.
    #[arg(long)]
    cursor: Option<String>,
    /// How fresh the read must be [router default: linearizable].
    #[arg(long, value_enum)]
    consistency: Option<Consistency>,
    /// Where and how to ask.
    #[command(flatten)]
    client: ClientArgs,
}

/// Arguments of `sentinel baselines`.
#[derive(Args)]
pub struct BaselinesArgs {
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Keys per page, in (service, model) order (1-1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BASELINES_LIMIT)))]
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

/// Arguments of `sentinel telemetry`.
#[derive(Args)]
pub struct TelemetryArgs {
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this model.
    #[arg(long, requires = "service")]
    model: Option<String>,
    /// Only records since this long ago (`30m`, `2h`, `7d`) or since this RFC 3339 time,
    /// by event time.
    #[arg(long, default_value = "24h", value_parser = parse_since, value_name = "DURATION|TIME")]
    since: Since,
    /// Records per page (1-10000).
    #[arg(long, default_value_t = 100, value_parser = limit_parser())]
    limit: u32,
    /// The next page: `next_cursor` of the previous one (printed after a table with more
    /// pages). The cursor fixes the look-back of the first page.
    #[arg(long)]
    cursor: Option<String>,
    /// How fresh the read must be [router default: linearizable].
    #[arg(long, value_enum)]
    consistency: Option<Consistency>,
    /// Where and how to ask.
    #[command(flatten)]
    client: ClientArgs,
}

/// The start of a look-back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Since {
    /// This long before now.
    Ago(Duration),
    /// This instant, in ms since the Unix epoch.
    At(i64),
}

impl Since {
    /// The start in ms since the Unix epoch, when now is `now_ms`.
    fn start_ms(self, now_ms: i64) -> i64 {
        match self {
            Since::Ago(ago) => now_ms - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX),
            Since::At(at) => at,
        }
    }
}

/// Reads `--since`: a duration (`1h30m`) or an RFC 3339 time.
fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Since::At(time.timestamp_millis()));
    }
    parse_duration(text).map(Since::Ago).ok_or_else(|| {
        format!("`{text}` is neither a duration (90s, 30m, 2h, 7d, 1h30m) nor an RFC 3339 time")
    })
}

/// A duration such as `90s`, `30m`, `2h`, `7d`, `1w` or `1h30m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let (number, tail) = rest.split_at(digits);
        let unit = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let seconds = match &tail[..unit] {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return None,
        };
        let count: u64 = number.parse().ok()?;
        total += Duration::from_secs(count.checked_mul(seconds)?);
        rest = &tail[unit..];
    }
    Some(total)
}

/// `--limit`: 1 to the most a query answers.
fn limit_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT))
}

/// Why a query command failed, which decides its exit status.
#[derive(Debug)]
enum Failure {
    /// An argument is unusable.
    Usage(String),
    /// No connection to the router could be made.
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The router refused or failed the call.
    Refused(Status),
    /// The answer could not be written.
    Output(std::io::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl Failure {
    /// The exit status scripts see.
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Unreachable { .. } => 3,
            Failure::Refused(status) => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => 2,
                Code::Unavailable | Code::DeadlineExceeded => 3,
                Code::Unauthenticated | Code::PermissionDenied => 4,
                Code::NotFound => 5,
                _ => 1,
            },
            Failure::Output(_) | Failure::Other(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(message) => f.write_str(message),
            Failure::Unreachable { endpoint, reason } => {
                write!(f, "cannot reach the router at {endpoint}: {reason}")
            }
            Failure::Refused(status) => write!(f, "{} ({:?})", status_text(status), status.code()),
            Failure::Output(error) => write!(f, "writing the answer: {error}"),
            Failure::Other(error) => write!(f, "{error:#}"),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure::Refused(status)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::Output(error)
    }
}

/// A status's message, with the `{field, problem}` pairs of its `sentinel-details`
/// trailer that the message does not already tell.
fn status_text(status: &Status) -> String {
    let mut text = match status.message() {
        "" => format!("the router answered {:?}", status.code()),
        message => message.to_owned(),
    };
    let details = status
        .metadata()
        .get(DETAILS_TRAILER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| serde_json::from_str::<Vec<Value>>(value).ok())
        .unwrap_or_default();
    for detail in details {
        let field = detail["field"].as_str().unwrap_or_default();
        let problem = detail["problem"].as_str().unwrap_or_default();
        let pair = format!("{field}: {problem}");
        if !text.contains(&pair) {
            text += "; ";
            text += &pair;
        }
    }
    text
}

/// A connection to the router's public API and the key to present.
struct Client {
    api: SentinelClient<Channel>,
    key: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connects to the router `args` name.
    async fn connect(args: &ClientArgs) -> Result<Client, Failure> {
        let key = args
            .api_key
            .as_ref()
            .map(|key| {
                MetadataValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| Failure::Usage("--api-key: only visible ASCII can be sent".into()))
            })
            .transpose()?;
        let endpoint = if args.endpoint.contains("://") {
            args.endpoint.clone()
        } else {
            format!("http://{}", args.endpoint)
        };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| Failure::Usage(format!("--endpoint `{}`: {e}", args.endpoint)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| Failure::Unreachable {
                endpoint,
                reason: causes(&e),
            })?;
        let api = SentinelClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client { api, key })
    }

    /// `message` as a request carrying the key.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(key) = &self.key {
            request.metadata_mut().insert("authorization", key.clone());
        }
        request
    }
}

/// An error and its causes on one line, each told once.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let told = cause.to_string();
        if !text.contains(&told) {
            text += ": ";
            text += &told;
        }
        source = cause.source();
    }
    text
}

/// Runs a query command; returns its exit status after printing any error on stderr.
pub fn run(command: QueryCommand) -> i32 {
    let result = match crate::runtime() {
        Ok(runtime) => runtime.block_on(execute(command)),
        Err(error) => Err(Failure::Other(error)),
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(failure) => {
            eprintln!("error: {}", output::escaped(&failure.to_string()));
            failure.exit_code()
        }
    }
}

async fn execute(command: QueryCommand) -> Result<(), Failure> {
    match command {
        QueryCommand::Anomalies(args) => anomalies(args).await,
        QueryCommand::Baselines(args) => baselines(args).await,
        QueryCommand::Telemetry(args) => telemetry(args).await,
        QueryCommand::Incidents(args) => operate::incidents(args).await,
        QueryCommand::Silence { command } => operate::silence(command).await,
        QueryCommand::Cluster {
            command: ClusterCommand::Status { client },
        } => cluster_status(client).await,
        QueryCommand::Cluster {
            command: ClusterCommand::Decommission { node_id, client },
        } => decommission(node_id, client).await,
    }
}

/// The look-back in hours from `start_ms` to now, refusing a start in the future.
fn hours_since(start_ms: i64) -> Result<f64, Failure> {
    let span = now_ms() - start_ms;
    if span <= 0 {
        return Err(Failure::Usage("--since: the time is in the future".into()));
    }
    Ok(span as f64 / 3_600_000.0)
}

/// A flag's value as the router takes it: its name on the command line (empty when unset).
fn flag_value(value: Option<impl ValueEnum>) -> String {
    value
        .and_then(|v| v.to_possible_value())
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// Writes `text` and a newline to stdout.
fn print(text: impl fmt::Display) -> Result<(), Failure> {
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

/// One page of a list answer.
struct Page {
    /// What the items are, as the REST answer names its list (`anomalies`, `baselines`,
    /// `records`).
    list: &'static str,
    /// What a table says when there are no items.
    none: &'static str,
    /// The items.
    items: Vec<Value>,
    /// The next page's cursor.
    next: Option<String>,
}

impl Page {
    /// The page of a gRPC answer whose records are `list`, saying `none` when empty.
    fn of(list: &'static str, none: &'static str, reply: QueryReply) -> Page {
        Page {
            list,
            none,
            items: reply.records.into_iter().map(from_struct).collect(),
            next: Some(reply.next_cursor).filter(|cursor| !cursor.is_empty()),
        }
    }

    /// Prints the page: JSON `{count, <list>, next_cursor}`, or the items as `table`
    /// shows them (a line saying there are none when so) and the next page's cursor on
    /// stderr.
    fn print<T: fmt::Display>(
        self,
        output: Output,
        table: impl FnOnce(&[Value]) -> T,
    ) -> Result<(), Failure> {
        match output {
            Output::Json => print(json!({
                "count": self.items.len(),
                self.list: self.items,
                "next_cursor": self.next,
            })),
            Output::Table => {
                if self.items.is_empty() {
                    print(self.none)?;
                } else {
                    print(table(&self.items))?;
                }
                if let Some(cursor) = self.next {
                    eprintln!("more {}: --cursor {cursor}", self.list);
                }
                Ok(())
            }
        }
    }
}

async fn anomalies(args: AnomaliesArgs) -> Result<(), Failure> {
    let mut client = Client::connect(&args.client).await?;
    let start_ms = args.since.start_ms(now_ms());
    if !args.follow {
        let page = newest_anomalies(&mut client, &args, start_ms).await?;
        return page.print(args.client.output, output::anomalies_table);
    }
    tokio::select! {
        followed = follow(&mut client, &args, start_ms) => followed,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// The page of the newest anomalies since `start_ms` (or after `--cursor`) that `args`
/// selects, newest first.
async fn newest_anomalies(
    client: &mut Client,
    args: &AnomaliesArgs,
    start_ms: i64,
) -> Result<Page, Failure> {
    let picked = args.service.is_some() || args.model.is_some();
    let query = AnomaliesQuery {
        severity: flag_value(args.severity),
        hours: Some(hours_since(start_ms)?),
        limit: Some(if picked { MAX_LIMIT } else { args.limit }),
        consistency: flag_value(args.consistency),
        cursor: args.cursor.clone().unwrap_or_default(),
    };
    let reply = client
        .api
        .anomalies(client.request(query))
        .await?
        .into_inner();
    let wanted = |field: &str, value: &Option<String>, alert: &Value| {
        value.as_deref().is_none_or(|v| alert[field] == v)
    };
    let mut page = Page::of("anomalies", "no anomalies", reply);
    page.items.retain(|alert| {
        wanted("service_name", &args.service, alert) && wanted("model", &args.model, alert)
    });
    page.items.truncate(args.limit as usize);
    Ok(page)
}

/// Polls for anomalies every [`FOLLOW_PERIOD`] and prints each new one once, oldest
/// first. Once the first poll answered, an unavailable router is reported and polled
/// again rather than ending the command.
async fn follow(client: &mut Client, args: &AnomaliesArgs, start_ms: i64) -> Result<(), Failure> {
    let id = |alert: &Value| match alert["alert_id"].as_str() {
        Some(id) => id.to_owned(),
        None => alert.to_string(),
    };
    let mut seen: Option<HashSet<String>> = None;
    let mut ticker = tokio::time::interval(FOLLOW_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if args.client.output == Output::Table {
        print(output::follow_header())?;
    }
    loop {
        ticker.tick().await;
        let anomalies = match newest_anomalies(client, args, start_ms).await {
            Ok(page) => page.items,
            Err(Failure::Refused(status))
                if seen.is_some()
                    && matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
            {
                eprintln!(
                    "warning: {}; asking again",
                    output::escaped(&status_text(&status))
                );
                continue;
            }
            Err(failure) => return Err(failure),
        };
        let known = seen.unwrap_or_default();
        for alert in anomalies.iter().rev().filter(|a| !known.contains(&id(a))) {
            match args.client.output {
                Output::Json => print(alert)?,
                Output::Table => print(output::follow_line(alert))?,
            }
        }
        // Only the answer's ids are kept: an anomaly that left the newest `--limit` does
        // not come back, as newer ones only pile up above it.
        seen = Some(anomalies.iter().map(id).collect());
    }
}

async fn baselines(args: BaselinesArgs) -> Result<(), Failure> {
    let mut client = Client::connect(&args.client).await?;
    let query = BaselinesQuery {
        service: args.service.unwrap_or_default(),
        model: args.model.unwrap_or_default(),
        consistency: flag_value(args.consistency),
        limit: Some(args.limit),
        cursor: args.cursor.unwrap_or_default(),
    };
    let reply = client
        .api
        .baselines(client.request(query))
        .await?
        .into_inner();
    Page::of("baselines", "no baselines", reply).print(args.client.output, output::baselines_tables)
}

async fn telemetry(args: TelemetryArgs) -> Result<(), Failure> {
    let mut client = Client::connect(&args.client).await?;
    let query = TelemetryQuery {
        service: args.service.unwrap_or_default(),
        model: args.model.unwrap_or_default(),
        hours: Some(hours_since(args.since.start_ms(now_ms()))?),
        limit: Some(args.limit),
        cursor: args.cursor.unwrap_or_default(),
        consistency: flag_value(args.consistency),
    };
    let reply = client
        .api
        .telemetry(client.request(query))
        .await?
        .into_inner();
    Page::of("records", "no telemetry records", reply)
        .print(args.client.output, output::telemetry_table)
}

async fn cluster_status(args: ClientArgs) -> Result<(), Failure> {
    let mut client = Client::connect(&args).await?;
    let reply = client
        .api
        .cluster_status(client.request(ClusterStatusQuery {}))
        .await?
        .into_inner();
    let status = from_struct(reply);
    match args.output {
        Output::Json => print(status),
        Output::Table => print(output::cluster_tables(&status)),
    }
}

async fn decommission(node_id: u64, args: ClientArgs) -> Result<(), Failure> {
    let mut client = Client::connect(&args).await?;
    let reply = client
        .api
        .decommission(client.request(DecommissionQuery { node_id }))
        .await?
        .into_inner();
    match args.output {
        Output::Json => print(json!({
            "node_id": node_id,
            "shards_remaining": reply.shards_remaining,
        })),
        Output::Table => print(match reply.shards_remaining {
            0 => format!("node {node_id} is drained: no shard has a replica on it"),
            n => format!(
                "node {node_id} is draining: {n} shard{} still {} a replica on it; run this again to follow",
                if n == 1 { "" } else { "s" },
                if n == 1 { "has" } else { "have" },
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: QueryCommand,
    }

    #[test]
    fn since_takes_durations_and_rfc3339_times() {
        let ago = |secs| Ok(Since::Ago(Duration::from_secs(secs)));
        assert_eq!(parse_since("90s"), ago(90));
        assert_eq!(parse_since("2h"), ago(7_200));
        assert_eq!(parse_since("1h30m"), ago(5_400));
        assert_eq!(parse_since("7d"), ago(604_800));
        assert_eq!(parse_since("1w"), ago(604_800));
        assert_eq!(
            parse_since("2026-03-01T12:00:00Z"),
            Ok(Since::At(1_772_366_400_000))
        );
        for bad in ["", "h", "2", "2x", "1.5h", "-1h", "yesterday", "2h 30m"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        assert_eq!(Since::Ago(Duration::from_secs(1)).start_ms(5_000), 4_000);
    }

    #[test]
    fn refusals_map_to_the_documented_exit_statuses() {
        let code = |code| Failure::Refused(Status::new(code, "m")).exit_code();
        assert_eq!(code(Code::InvalidArgument), 2);
        assert_eq!(code(Code::Unavailable), 3);
        assert_eq!(code(Code::DeadlineExceeded), 3);
        assert_eq!(code(Code::Unauthenticated), 4);
        assert_eq!(code(Code::PermissionDenied), 4);
        assert_eq!(code(Code::NotFound), 5);
        assert_eq!(code(Code::Internal), 1);
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
    }

    #[test]
    fn an_error_line_adds_only_the_details_the_message_lacks() {
        let mut status = Status::invalid_argument("1 invalid query parameter; limit: too big");
        status.metadata_mut().insert(
            DETAILS_TRAILER,
            r#"[{"field":"limit","problem":"too big"},{"field":"hours","problem":"must be above 0"}]"#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            status_text(&status),
            "1 invalid query parameter; limit: too big; hours: must be above 0"
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["sentinel", "anomalies", "--limit", "0"][..],
            &["sentinel", "anomalies", "--limit", "10001"],
            &["sentinel", "anomalies", "--since", "soon"],
            &["sentinel", "anomalies", "--severity", "urgent"],
            &["sentinel", "telemetry", "--model", "gpt-4o"],
            &["sentinel", "anomalies", "--follow", "--cursor", "c"],
            &["sentinel", "baselines", "--limit", "1001"],
            &["sentinel", "cluster", "decommission", "node-1"],
        ] {
            let error = Cli::try_parse_from(args).err().expect("refused");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
        assert!(Cli::try_parse_from(["sentinel", "anomalies", "--follow", "-o", "json"]).is_ok());
    }
}
