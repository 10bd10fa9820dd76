//! A route's `max_in_flight` (bulkhead), through the real binary: when the route has that many
//! requests in flight the next one gets 503 `overloaded` with `Retry-After` at once, other routes
//! keep being served, and the route takes requests again as its own finish.

mod support;

use std::time::Duration;

use support::{wait_until, Backend, Client, Gateway, Toml};

#[test]
fn a_full_route_refuses_at_once_and_other_routes_go_on() {
    let b = Backend::start("b");
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route(
                "slow",
                "app",
                "match = { path_prefix = \"/sleep\" }\nmax_in_flight = 2",
            )
            .route("rest", "app", "")
            .service("app", &[b.addr], "")
            .build(),
    );
    let addr = gw.addr();
    let holders: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || Client::connect(addr).get("/sleep/1500").status))
        .collect();
    wait_until("two slow requests upstream", Duration::from_secs(5), || {
        b.hits() == 2
    });
    let mut c = gw.client();
    let r = c.get("/sleep/10");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(b.hits(), 2, "refused without reaching the upstream");
    // Another route is not held by this one's requests.
    assert_eq!(c.get("/other").status, 200);
    for h in holders {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(c.get("/sleep/10").status, 200, "places are given back");
}
