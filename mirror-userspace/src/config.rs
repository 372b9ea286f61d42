//! The YAML configuration: what to capture, the routes (Istio VirtualService `http` semantics:
//! ordered, first match wins), and where each mirror destination is reached.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub capture: Capture,
    pub routes: Vec<Route>,
    /// `host` or `host/subset` → addresses of that mirror destination.
    pub endpoints: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub replay: ReplaySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Interfaces whose TC ingress hook gets the classifier.
    pub interfaces: Vec<String>,
    /// Destination ports of the primary service.
    pub ports: Vec<u16>,
    /// Pages per CPU of the perf ring (a power of two); default 256 (1 MiB on 4 KiB pages).
    #[serde(default = "default_perf_pages")]
    pub perf_pages: usize,
}

fn default_perf_pages() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplaySettings {
    /// Kept-alive connections per mirror endpoint address.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Requests waiting per connection before new ones are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests up to this size (head + body) are held until every byte was seen and only then
    /// sent. Larger ones are streamed to the mirror as they arrive (constant memory); if one of
    /// their bytes is lost, the mirror connection is reset so it never gets a complete request.
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            connections: default_connections(),
            queue: default_queue(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            buffer_bytes: default_buffer_bytes(),
        }
    }
}

fn default_connections() -> usize {
    4
}
fn default_queue() -> usize {
    1024
}
fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_buffer_bytes() -> usize {
    1024 * 1024
}

impl ReplaySettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// One entry of the VirtualService `http` list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks: conditions in one block AND, blocks OR; none means every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchRequest>,
    pub mirror: Destination,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// The `endpoints` key this destination is looked up by.
    pub fn endpoint_key(&self) -> String {
        match &self.subset {
            Some(s) => format!("{}/{}", self.host, s),
            None => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Istio `HTTPMatchRequest` (the subset this version supports).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Header name (lower case) → match; `{}` means "present".
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
}

/// Istio `StringMatch`: exactly one of exact/prefix/regex, or none (presence only, for headers).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

impl Config {
    /// Parses YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = serde_yaml::from_str(text).with_context(|| format!("{origin}: invalid config"))?;
        cfg.validate().with_context(|| format!("{origin}: invalid config"))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks what serde cannot: references, ranges, addresses.
    pub fn validate(&self) -> Result<()> {
        if self.capture.interfaces.is_empty() {
            bail!("capture.interfaces: at least one interface is needed");
        }
        if self.capture.ports.is_empty() {
            bail!("capture.ports: at least one port is needed");
        }
        if self.capture.ports.contains(&0) {
            bail!("capture.ports: 0 is not a port");
        }
        if !self.capture.perf_pages.is_power_of_two() {
            bail!("capture.perf_pages: {} is not a power of two", self.capture.perf_pages);
        }
        if self.routes.is_empty() {
            bail!("routes: at least one route is needed");
        }
        for (name, addrs) in &self.endpoints {
            if addrs.is_empty() {
                bail!("endpoints.{name}: no addresses");
            }
            for a in addrs {
                a.parse::<SocketAddr>().with_context(|| format!("endpoints.{name}: '{a}' is not an address:port"))?;
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let label = r.name.clone().unwrap_or_else(|| format!("#{i}"));
            let key = r.mirror.endpoint_key();
            if !self.endpoints.contains_key(&key) {
                let known: Vec<_> = self.endpoints.keys().cloned().collect();
                bail!("routes[{label}].mirror: no endpoint '{key}' (endpoints has: {})", known.join(", "));
            }
            if let Some(p) = r.mirror_percentage
                && !(0.0..=100.0).contains(&p.value)
            {
                bail!("routes[{label}].mirrorPercentage.value: {} is not within [0, 100]", p.value);
            }
            for (j, m) in r.matches.iter().enumerate() {
                let at = format!("routes[{label}].match[{j}]");
                for (field, sm) in [("uri", &m.uri), ("method", &m.method), ("authority", &m.authority)] {
                    if let Some(sm) = sm {
                        sm.check(&format!("{at}.{field}"), false)?;
                    }
                }
                for (h, sm) in m.headers.iter().chain(m.without_headers.iter()) {
                    if h.chars().any(|c| c.is_ascii_uppercase()) {
                        bail!("{at}.headers.{h}: header names must be lower case");
                    }
                    sm.check(&format!("{at}.headers.{h}"), true)?;
                }
            }
        }
        let rs = &self.replay;
        if rs.connections == 0 || rs.queue == 0 {
            bail!("replay: connections and queue must be at least 1");
        }
        Ok(())
    }
}

impl StringMatch {
    fn check(&self, at: &str, presence_ok: bool) -> Result<()> {
        let set = [&self.exact, &self.prefix, &self.regex].iter().filter(|o| o.is_some()).count();
        if set > 1 {
            bail!("{at}: give only one of exact, prefix, regex");
        }
        if set == 0 && !presence_ok {
            bail!("{at}: give one of exact, prefix, regex");
        }
        if let Some(re) = &self.regex {
            regex::Regex::new(re).with_context(|| format!("{at}.regex: invalid regular expression"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
capture:
  interfaces: [eth0]
  ports: [8000]
routes:
  - name: default
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
endpoints:
  httpbin/v2: ["10.77.0.3:8000"]
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD, "t").unwrap();
        assert_eq!(c.capture.ports, vec![8000]);
        assert_eq!(c.routes[0].mirror.endpoint_key(), "httpbin/v2");
        assert_eq!(c.replay.connections, 4);
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, "t").unwrap_err())
    }

    #[test]
    fn clear_errors() {
        assert!(err(&GOOD.replace("ports", "prots")).contains("unknown field `prots`"));
        assert!(err(&GOOD.replace("httpbin/v2:", "httpbin/v3:")).contains("no endpoint 'httpbin/v2'"));
        assert!(err(&GOOD.replace("100.0", "150")).contains("not within [0, 100]"));
        assert!(err(&GOOD.replace("10.77.0.3:8000", "nowhere")).contains("not an address:port"));
        assert!(err(&GOOD.replace("[8000]", "[]")).contains("at least one port"));
        let e = err(&GOOD.replace("interfaces: [eth0]", "interfaces: eth0"));
        assert!(e.contains("line"), "{e}");
        let bad_re = GOOD.replace("    mirror:", "    match: [{uri: {regex: \"(\"}}]\n    mirror:");
        assert!(err(&bad_re).contains("invalid regular expression"));
    }
}
