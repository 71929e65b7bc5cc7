//! Logs, traces and metrics for fleetsnap's processes.
//!
//! - [`init`] installs the process's tracing subscriber: key/value or JSON log lines on stderr,
//!   and an OpenTelemetry layer. With an OTLP endpoint, sampled spans are exported over OTLP/gRPC;
//!   without one, spans still get trace ids (so log lines of one window share one across
//!   processes) and nothing is recorded or exported.
//! - [`trace`]: the trace context that crosses processes, as a W3C `traceparent` string (in gRPC
//!   metadata, and in the jobs the coordinator hands to agents).
//! - [`metrics`]: the Prometheus text format and a registry for counters and gauges.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz`.

pub mod http;
pub mod metrics;
pub mod trace;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What went wrong setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP endpoint is not a URL the exporter can use.
    #[error(
        "[telemetry] otlp_endpoint {endpoint:?}: {reason}; give the collector's OTLP/gRPC URL, \
         e.g. http://127.0.0.1:4317"
    )]
    Endpoint { endpoint: String, reason: String },
    /// The metrics address cannot be bound.
    #[error(
        "cannot serve /metrics on {address}: {source}; is another process using the port? \
         change [telemetry] metrics_listen"
    )]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// A subscriber was already installed (a second `init` in one process).
    #[error("logging is already set up in this process")]
    AlreadyInitialised,
}

/// The `[telemetry]` section of the coordinator's and the agent's config files.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint spans are exported to, e.g. `http://otel-collector:4317`. Unset,
    /// nothing is exported (log lines still carry trace ids).
    pub otlp_endpoint: Option<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port`). Unset, nothing is
    /// served.
    pub metrics_listen: Option<SocketAddr>,
}

impl TelemetryConfig {
    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), String> {
        match self.otlp_endpoint.as_deref().and_then(endpoint_problem) {
            Some(why) => Err(Error::Endpoint {
                endpoint: self.otlp_endpoint.clone().unwrap_or_default(),
                reason: why.into(),
            }
            .to_string()),
            None => Ok(()),
        }
    }
}

/// What is wrong with an OTLP endpoint, if anything.
fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    (!(endpoint.starts_with("http://") || endpoint.starts_with("https://")))
        .then_some("it does not start with http:// or https://")
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-11-21T10:00:00Z  INFO window{policy="hourly" trace_id=…}: window opened window=3`.
    #[default]
    Text,
    /// One JSON object per line, with the fields of every span the event is in.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: use text or json")),
        }
    }
}

/// The logging flags the coordinator and the agent daemon share.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log lines as `text` (key=value) or `json` (one object per line).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "text",
        env = "FLEETSNAP_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Who this process is, for span resources.
#[derive(Clone, Debug)]
pub struct Service {
    /// `fleetsnap-coordinator`, `fleetsnap-agent`, `fleetsnap`.
    pub name: &'static str,
    /// The instance: a coordinator's node id, an agent's id.
    pub instance: String,
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] sends what is still buffered.
#[must_use = "dropping it without shutdown loses the last spans"]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// Installs the subscriber. `default_filter` applies unless `FLEETSNAP_LOG` is set (same syntax:
/// `info,openraft=warn`). With `otlp_endpoint`, this must run inside the tokio runtime that then
/// carries the exports.
pub fn init(
    service: Service,
    format: LogFormat,
    default_filter: &str,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, Error> {
    let resource = Resource::builder()
        .with_service_name(service.name)
        .with_attribute(KeyValue::new("service.instance.id", service.instance))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let (provider, exporting) = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = OnRuntime::new(endpoint)?;
            let provider = builder
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
                .with_batch_exporter(exporter)
                .build();
            (provider, true)
        }
        // Spans still get ids (log lines carry them, jobs pass them on) but none is recorded.
        None => (builder.with_sampler(Sampler::AlwaysOff).build(), false),
    };
    let tracer = provider.tracer(service.name);
    let filter = EnvFilter::try_from_env("FLEETSNAP_LOG").unwrap_or_else(|_| default_filter.into());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| Error::AlreadyInitialised)?;
    Ok(Telemetry {
        provider,
        exporting,
    })
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Sends the spans still buffered (waiting at most 5 s) and stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The batch processor's thread hands exports to this runtime: block elsewhere.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        })
        .await;
    }
}

/// The OTLP/gRPC exporter, run on the process's tokio runtime: the SDK's batch processor calls
/// exporters from a thread of its own, where tonic finds no runtime.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    fn new(endpoint: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Endpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        if let Some(why) = endpoint_problem(endpoint) {
            return Err(bad(why.into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| bad("no tokio runtime to export from".into()))?;
        let _entered = runtime.enter();
        let inner = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(OnRuntime {
            inner: Arc::new(inner),
            runtime,
        })
    }
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "the export task ended: {e}"
            ))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_that_is_not_a_url_is_refused_by_name() {
        let mut c = TelemetryConfig {
            otlp_endpoint: Some("collector:4317".into()),
            ..TelemetryConfig::default()
        };
        let e = c.check().unwrap_err();
        assert!(
            e.contains("\"collector:4317\"") && e.contains("http://"),
            "{e}"
        );
        c.otlp_endpoint = Some("http://collector:4317".into());
        c.check().unwrap();
    }
}
