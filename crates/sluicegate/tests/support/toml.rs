//! A builder for test configs, so each test states only what it is about.

use std::net::SocketAddr;

/// A config text being built; every listener binds 127.0.0.1:0 and the access log is off unless
/// a test says otherwise.
pub struct Toml {
    text: String,
}

impl Default for Toml {
    fn default() -> Self {
        Toml::new()
    }
}

impl Toml {
    pub fn new() -> Toml {
        Toml {
            text: "[access_log]\npath = \"off\"\n".into(),
        }
    }

    /// The usual shape: listener `public`, route `all` to service `app` over `endpoints`.
    pub fn proxy_to(endpoints: &[SocketAddr]) -> Toml {
        Toml::new()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", endpoints, "")
    }

    /// Adds `[admin]` on a free port.
    pub fn admin(mut self) -> Toml {
        self.text.push_str("\n[admin]\nbind = \"127.0.0.1:0\"\n");
        self
    }

    /// Replaces the access log setting.
    pub fn access_log(mut self, path: &str) -> Toml {
        self.text = self
            .text
            .replacen("path = \"off\"", &format!("path = \"{path}\""), 1);
        self
    }

    /// Adds a listener on 127.0.0.1:0; `extra` holds more keys of the table.
    pub fn listener(mut self, name: &str, extra: &str) -> Toml {
        self.text.push_str(&format!(
            "\n[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\n{extra}\n"
        ));
        self
    }

    /// Adds a route; `extra` holds more keys of the table (match, timeout...).
    pub fn route(mut self, name: &str, service: &str, extra: &str) -> Toml {
        self.text.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\nservice = \"{service}\"\n{extra}\n"
        ));
        self
    }

    /// Adds a service with weight-1 endpoints; `extra` holds more keys and then sub-tables.
    pub fn service(self, name: &str, endpoints: &[SocketAddr], extra: &str) -> Toml {
        let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
        self.weighted_service(name, &weighted, extra)
    }

    /// Adds a service with weighted endpoints.
    pub fn weighted_service(
        mut self,
        name: &str,
        endpoints: &[(SocketAddr, u32)],
        extra: &str,
    ) -> Toml {
        let list: Vec<String> = endpoints
            .iter()
            .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
            .collect();
        // Keys first, then whatever sub-tables `extra` opens.
        let (keys, tables) = match extra.find("\n[") {
            Some(i) => extra.split_at(i),
            None if extra.trim_start().starts_with('[') => ("", extra),
            None => (extra, ""),
        };
        self.text.push_str(&format!(
            "\n[[services]]\nname = \"{name}\"\n{keys}\nendpoints = [{}]\n{tables}\n",
            list.join(", ")
        ));
        self
    }

    pub fn build(&self) -> String {
        self.text.clone()
    }
}
