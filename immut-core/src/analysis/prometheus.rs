//! The Prometheus provider: an instant query over Prometheus's HTTP API
//! (`GET /api/v1/query`), templated with the deployment.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;

use super::provider::{AnalysisContext, MetricProvider, Reading};
use super::template::{QueryTemplate, Side};
use crate::error::{Error, Result};

/// Measures a PromQL query, asked of a Prometheus server at each measurement.
///
/// The query is a template: `{{service}}`, `{{release}}` (the release id), `{{version}}` (the
/// artifact version), `{{deployment}}` (the deployment id) and `{{instances}}` (the addresses of
/// the instances under analysis as a regex alternation, escaped, for
/// `instance=~"{{instances}}"`) are filled in, escaped for a double-quoted PromQL string.
///
/// The answer must be one number: a scalar, or a vector of one series (aggregate with `sum`,
/// `max`...; more series are an error, not a guess). An empty vector is [`Reading::Empty`]
/// (inconclusive, never successful), and `NaN` (`0/0` with no traffic) is inconclusive too. An
/// unreachable server, a timeout or an error body (`"status":"error"`, with its `errorType`
/// and `error`) is an error.
///
/// Error ratios: `sum(rate(errors[1m])) / sum(rate(all[1m]))` is empty while no error was
/// ever counted (the error series does not exist yet); write the numerator
/// `(sum(rate(errors[1m])) or vector(0))`.
pub struct PrometheusProvider {
    pub(super) client: reqwest::Client,
    /// The server's base URL, without credentials.
    base: url::Url,
    auth: Option<Auth>,
    query: String,
    pub(super) template: QueryTemplate,
    timeout: Duration,
}

enum Auth {
    Basic { user: String, password: Option<String> },
    Bearer(String),
}

impl std::fmt::Debug for PrometheusProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            None => "none",
            Some(Auth::Basic { .. }) => "basic (redacted)",
            Some(Auth::Bearer(_)) => "bearer (redacted)",
        };
        f.debug_struct("PrometheusProvider")
            .field("url", &self.base.as_str())
            .field("auth", &auth)
            .field("query", &self.query)
            .finish()
    }
}

/// Settings of a [`PrometheusProvider`]; [`PrometheusBuilder::build`] checks them.
#[derive(Clone)]
pub struct PrometheusBuilder {
    url: String,
    query: String,
    timeout: Duration,
    bearer: Option<String>,
}

impl std::fmt::Debug for PrometheusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusBuilder")
            .field("url", &redacted(&self.url))
            .field("query", &self.query)
            .field("timeout", &self.timeout)
            .field("bearer", &self.bearer.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

impl PrometheusBuilder {
    /// How long one query may take (default 10 s); it is also sent as the query's own
    /// `timeout`, so that the server gives up too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <token>` (a token never appears in errors or Debug).
    /// Basic credentials go in the URL (`http://user:password@host:9090`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// Checks the settings, naming the field: `prometheus.url` (an `http://` URL, with no
    /// query or fragment), `prometheus.query` (not empty, known placeholders only) and
    /// `prometheus.timeout` (above zero).
    pub fn build(self) -> Result<PrometheusProvider> {
        let shown = redacted(&self.url);
        let mut base = url::Url::parse(self.url.trim()).map_err(|e| {
            Error::invalid("prometheus.url", format!("{shown:?} is not a URL ({e}); write http://host:9090"))
        })?;
        if base.scheme() != "http" {
            return Err(Error::invalid(
                "prometheus.url",
                format!(
                    "{shown:?}: only http:// is supported (immut-core's HTTP client is built without TLS); reach \
                     the server over plain HTTP, through a local proxy if it only speaks https"
                ),
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::invalid(
                "prometheus.url",
                format!("{shown:?}: give the server's base URL (http://host:9090), without a query or fragment"),
            ));
        }
        let user = base.username().to_owned();
        let password = base.password().map(str::to_owned);
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let basic = (!user.is_empty() || password.is_some())
            .then(|| Auth::Basic { user: decoded(&user), password: password.as_deref().map(decoded) });
        if basic.is_some() && self.bearer.is_some() {
            return Err(Error::invalid(
                "prometheus.bearer_token",
                "both a bearer token and credentials in the URL are set; keep one",
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if self.query.trim().is_empty() {
            return Err(Error::invalid("prometheus.query", "the query is empty; write a PromQL expression"));
        }
        let template = QueryTemplate::parse(&self.query).map_err(|e| Error::invalid("prometheus.query", e))?;
        if self.timeout.is_zero() {
            return Err(Error::invalid("prometheus.timeout", "must be longer than zero"));
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::invalid("prometheus.timeout", format!("cannot build the HTTP client: {e}")))?;
        Ok(PrometheusProvider {
            client,
            base,
            auth: basic.or(self.bearer.map(Auth::Bearer)),
            query: self.query,
            template,
            timeout: self.timeout,
        })
    }
}

/// Percent-decodes a URL's user or password (`%40` is `@`; a `+` stays a `+`).
fn decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL as it may be shown: any password replaced.
fn redacted(text: &str) -> String {
    match url::Url::parse(text.trim()) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => match text.rsplit_once('@') {
            Some((_, host)) => format!("(credentials redacted)@{host}"),
            None => text.to_owned(),
        },
    }
}

/// Prometheus's answer envelope (`/api/v1/query` and `/api/v1/query_range`).
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<VectorSample>),
    Matrix(Vec<MatrixSeries>),
    Scalar(Point),
    String(serde::de::IgnoredAny),
}

/// `[<unix time>, "<value>"]`: the value is a string, so that NaN and ±Inf survive JSON. The
/// time is not needed: samples are judged as a set.
#[derive(Debug, Deserialize)]
struct Point(serde::de::IgnoredAny, String);

#[derive(Debug, Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: Point,
}

#[derive(Debug, Deserialize)]
struct MatrixSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<Point>,
}

/// One series of an answer: its labels and its values (one for an instant query).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Series {
    pub labels: BTreeMap<String, String>,
    pub values: Vec<f64>,
}

fn number(point: &Point) -> std::result::Result<f64, String> {
    // Go writes +Inf, -Inf and NaN; Rust reads all three.
    point.1.parse::<f64>().map_err(|_| format!("the value {:?} is not a number", point.1))
}

impl PrometheusProvider {
    /// A provider asking the server at `url` (`http://host:9090`) the templated `query`.
    pub fn builder(url: impl Into<String>, query: impl Into<String>) -> PrometheusBuilder {
        PrometheusBuilder { url: url.into(), query: query.into(), timeout: Duration::from_secs(10), bearer: None }
    }

    /// The server's base URL (without credentials).
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// The query template, as given.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The rendered query for the release under analysis.
    pub fn render(&self, context: &AnalysisContext) -> std::result::Result<String, String> {
        self.template.render(&Side::canary(context))
    }

    /// Asks `GET /api/v1/query` (an instant query at the server's now).
    pub(super) async fn instant(&self, query: &str) -> std::result::Result<Vec<Series>, String> {
        self.ask("api/v1/query", &[("query", query.to_owned())]).await
    }

    /// Asks `GET /api/v1/query_range` for the last `window`, one value per `step`.
    pub(super) async fn range(
        &self,
        query: &str,
        window: Duration,
        step: Duration,
    ) -> std::result::Result<Vec<Series>, String> {
        let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let start = end - window.as_secs_f64();
        let params = [
            ("query", query.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", format!("{}", step.as_secs_f64())),
        ];
        self.ask("api/v1/query_range", &params).await
    }

    async fn ask(&self, path: &str, params: &[(&str, String)]) -> std::result::Result<Vec<Series>, String> {
        let mut url = self.base.join(path).map_err(|e| format!("prometheus {}: {e}", self.base))?;
        url.query_pairs_mut()
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .append_pair("timeout", &self.timeout.as_secs_f64().to_string());
        let shown = format!("prometheus {}{path}", self.base);
        let mut request = self.client.get(url);
        request = match &self.auth {
            Some(Auth::Basic { user, password }) => request.basic_auth(user, password.as_ref()),
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        let answer = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("{shown} timed out")
            } else if e.is_connect() {
                format!("{shown} is unreachable (connection failed); is the server up at that address?")
            } else {
                format!("{shown}: {}", e.without_url())
            }
        })?;
        let status = answer.status();
        let text = answer.text().await.map_err(|e| format!("{shown}: reading the answer: {}", e.without_url()))?;
        let parsed: std::result::Result<Answer, _> = serde_json::from_str(&text);
        let answer = match parsed {
            Ok(a) => a,
            Err(e) => {
                let start: String = text.chars().take(200).collect();
                return Err(format!("{shown} answered HTTP {status} that is not Prometheus's JSON ({e}): {start:?}"));
            }
        };
        if answer.status != "success" {
            return Err(format!(
                "{shown} refused the query (HTTP {status}, {}): {}",
                answer.error_type.as_deref().unwrap_or("no errorType"),
                answer.error.as_deref().unwrap_or("no error message")
            ));
        }
        match answer.data {
            None => Err(format!("{shown} answered success without data")),
            Some(Data::Vector(samples)) => samples
                .into_iter()
                .map(|s| Ok(Series { values: vec![number(&s.value)?], labels: s.metric }))
                .collect::<std::result::Result<_, String>>()
                .map_err(|e| format!("{shown}: {e}")),
            Some(Data::Matrix(series)) => series
                .into_iter()
                .map(|s| {
                    Ok(Series {
                        values: s.values.iter().map(number).collect::<std::result::Result<_, _>>()?,
                        labels: s.metric,
                    })
                })
                .collect::<std::result::Result<_, String>>()
                .map_err(|e| format!("{shown}: {e}")),
            Some(Data::Scalar(point)) => Ok(vec![Series {
                labels: BTreeMap::new(),
                values: vec![number(&point).map_err(|e| format!("{shown}: {e}"))?],
            }]),
            Some(Data::String(_)) => Err(format!("{shown}: the query evaluates to a string, not a number")),
        }
    }
}

#[async_trait]
impl MetricProvider for PrometheusProvider {
    async fn measure(&self, context: &AnalysisContext) -> std::result::Result<Reading, String> {
        let query = self.render(context)?;
        let series = self.instant(&query).await?;
        match series.as_slice() {
            [] => Ok(Reading::Empty),
            [one] => match one.values.as_slice() {
                [value] => Ok(Reading::Value(*value)),
                values => Err(format!("the query answered {} values for one series; want one", values.len())),
            },
            many => Err(format!(
                "the query answered {} series ({}); aggregate them into one (sum, max, avg) so that one number is judged",
                many.len(),
                many.iter().take(3).map(|s| format!("{:?}", s.labels)).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: PrometheusBuilder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn settings_are_checked_naming_the_field() {
        let q = "sum(up)";
        assert!(PrometheusProvider::builder("http://127.0.0.1:9090", q).build().is_ok());
        assert!(err(PrometheusProvider::builder("127.0.0.1:9090", q)).contains("prometheus.url"));
        assert!(err(PrometheusProvider::builder("https://p:9090", q)).contains("only http://"));
        assert!(err(PrometheusProvider::builder("http://p:9090/?x=1", q)).contains("without a query"));
        assert!(err(PrometheusProvider::builder("http://p:9090", " ")).contains("prometheus.query"));
        assert!(err(PrometheusProvider::builder("http://p:9090", "up{job=\"{{job}}\"}")).contains("{{job}}"));
        let e = err(PrometheusProvider::builder("http://p:9090", q).timeout(Duration::ZERO));
        assert!(e.contains("prometheus.timeout"), "{e}");
    }

    #[test]
    fn credentials_in_the_url_are_percent_decoded() {
        assert_eq!(decoded("p%40ss+w%2Fd%zz"), "p@ss+w/d%zz");
    }

    #[test]
    fn credentials_never_show_in_debug_or_errors() {
        let p = PrometheusProvider::builder("http://ops:hunter2@127.0.0.1:9090", "up").build().unwrap();
        assert_eq!(p.url(), "http://127.0.0.1:9090/");
        assert!(!format!("{p:?}").contains("hunter2"));
        let b = PrometheusProvider::builder("http://ops:hunter2@127.0.0.1:9090", "").bearer_token("t0ken");
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken"), "{shown}");
        let e = err(b);
        assert!(!e.contains("hunter2") && !e.contains("t0ken"), "{e}");
        let e = err(PrometheusProvider::builder("ftp://ops:hunter2@p:9090", "up"));
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn answers_are_read_as_prometheus_writes_them() {
        let vector: Answer = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"a"},"value":[1.5,"NaN"]}]}}"#,
        )
        .unwrap();
        let Some(Data::Vector(v)) = vector.data else { panic!("a vector") };
        assert!(number(&v[0].value).unwrap().is_nan());
        let matrix: Answer = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"+Inf"]]}]}}"#,
        )
        .unwrap();
        let Some(Data::Matrix(m)) = matrix.data else { panic!("a matrix") };
        assert_eq!(number(&m[0].values[1]).unwrap(), f64::INFINITY);
        let error: Answer =
            serde_json::from_str(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#).unwrap();
        assert_eq!((error.error_type.as_deref(), error.error.as_deref()), (Some("bad_data"), Some("parse error")));
    }
}
