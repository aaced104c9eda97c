//! Which web pages may open a signaling WebSocket, told by the upgrade's `Origin` header: any
//! page a user visits may try to open one to a server on their machine or network, and the
//! browser sends that page's origin. Clients that are not browsers send none and pass.

use sb_config::Mode;

/// The origins whose pages may connect.
#[derive(Debug, Clone)]
pub enum OriginPolicy {
    /// Any page (production mode without `http.allowed_origins`).
    Any,
    /// The pages of these origins only (`http.allowed_origins`).
    Listed(Vec<String>),
    /// The server's own pages and those of this machine (embedded mode's default).
    Local,
}

impl OriginPolicy {
    /// The policy for `mode` with the configured `allowed` origins.
    pub fn new(mode: Mode, allowed: &[String]) -> Self {
        if !allowed.is_empty() {
            Self::Listed(allowed.iter().map(|origin| origin.trim_end_matches('/').to_ascii_lowercase()).collect())
        } else if mode == Mode::Embedded {
            Self::Local
        } else {
            Self::Any
        }
    }

    /// Whether a request with this `Origin` header, sent to this `Host`, may connect.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(str::to_ascii_lowercase) else { return true };
        match self {
            Self::Any => true,
            Self::Listed(allowed) => allowed.contains(&origin),
            Self::Local => {
                let same = host.is_some_and(|host| {
                    let host = host.to_ascii_lowercase();
                    origin == format!("http://{host}") || origin == format!("https://{host}")
                });
                same || is_loopback_origin(&origin)
            }
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) names this machine.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(authority) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else { return false };
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_mode_takes_its_own_pages_and_this_machines_only() {
        let local = OriginPolicy::new(Mode::Embedded, &[]);
        let host = Some("192.168.1.5:7880");
        for origin in
            ["http://192.168.1.5:7880", "http://localhost:3000", "http://127.0.0.1:7880", "https://[::1]:8443", "HTTP://LOCALHOST"]
        {
            assert!(local.allows(Some(origin), host), "{origin}");
        }
        for origin in ["http://evil.example", "http://localhost.evil.example", "http://192.168.1.5:7881", "null", "file://"] {
            assert!(!local.allows(Some(origin), host), "{origin}");
        }
        assert!(local.allows(None, host), "clients that are not browsers send no origin");
    }

    #[test]
    fn a_list_replaces_the_default_and_production_takes_any_page_without_one() {
        let listed = OriginPolicy::new(Mode::Embedded, &["https://Meet.example.com/".to_owned()]);
        assert!(listed.allows(Some("https://meet.example.com"), None));
        assert!(!listed.allows(Some("http://localhost:7880"), Some("localhost:7880")), "the list is all that is allowed");
        assert!(OriginPolicy::new(Mode::Production, &[]).allows(Some("https://anywhere.example"), None));
    }
}
