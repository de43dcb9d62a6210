//! The web dashboard: files embedded in the binary (`dashboard/`: plain HTML, CSS and
//! JavaScript ES modules, no build step), served at `/` and `/ui/…`, and `names.js`, made
//! here from the protos (the state and code names, so that they are written once). Everything the page shows it reads
//! from the REST gateway on the same listener, with the caller's token; nothing is fetched
//! from anywhere else, which the Content-Security-Policy holds it to.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("dashboard/index.html");
const CSS: &str = include_str!("dashboard/app.css");

/// The JavaScript modules, by file name (`app.js` starts the page and imports the rest).
const MODULES: [(&str, &str); 17] = [
    ("app.js", include_str!("dashboard/app.js")),
    ("api.js", include_str!("dashboard/api.js")),
    ("batch.js", include_str!("dashboard/batch.js")),
    ("caller.js", include_str!("dashboard/caller.js")),
    ("constants.js", include_str!("dashboard/constants.js")),
    ("detail.js", include_str!("dashboard/detail.js")),
    ("dom.js", include_str!("dashboard/dom.js")),
    ("filter_form.js", include_str!("dashboard/filter_form.js")),
    ("format.js", include_str!("dashboard/format.js")),
    ("kinds.js", include_str!("dashboard/kinds.js")),
    ("list.js", include_str!("dashboard/list.js")),
    ("nav.js", include_str!("dashboard/nav.js")),
    ("ops_table.js", include_str!("dashboard/ops_table.js")),
    ("overview.js", include_str!("dashboard/overview.js")),
    ("router.js", include_str!("dashboard/router.js")),
    ("schedules.js", include_str!("dashboard/schedules.js")),
    ("status.js", include_str!("dashboard/status.js")),
];

/// `names.js`: the operation states and the `google.rpc.Code` names (by number), from the
/// protos' enums.
fn names_js() -> &'static str {
    static JS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JS.get_or_init(|| {
        let states: Vec<&str> = crate::model::State::ALL
            .into_iter()
            .map(crate::model::State::as_str)
            .collect();
        let codes: Vec<&str> = (0..=16)
            .map(|n| {
                crate::proto::google::rpc::Code::try_from(n)
                    .map_or("UNKNOWN", |code| code.as_str_name())
            })
            .collect();
        format!(
            "// Made by the server from its protos: the operation states, and the \
             google.rpc.Code names by number.\n\
             export const STATES = {};\nexport const CODE_NAMES = {};\n",
            serde_json::Value::from(states),
            serde_json::Value::from(codes),
        )
    })
}

/// Only this origin, no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into a router serving the REST gateway on the same
/// origin.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route("/ui/names.js", get(|| async { asset(names_js(), JS) }));
    for (name, body) in MODULES {
        router = router.route(
            &format!("/ui/{name}"),
            get(move || async move { asset(body, JS) }),
        );
    }
    router
}

/// The content type of every module.
const JS: &str = "text/javascript; charset=utf-8";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small, and served with the binary: always asked again, so an upgrade shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod module_tests {
    use super::*;

    /// Every module in `dashboard/` is served, and every module a module imports is one the
    /// server serves (a file added or renamed without its route would break the page).
    #[test]
    fn every_module_is_served_and_every_import_resolves() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/dashboard");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("the dashboard directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".js"))
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = MODULES.iter().map(|(n, _)| (*n).to_owned()).collect();
        served.sort();
        assert_eq!(on_disk, served);
        for (name, body) in MODULES {
            for line in body.lines().filter(|l| l.contains(" from \"./")) {
                let target = line
                    .split(" from \"./")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .expect("an import path");
                assert!(
                    target == "names.js" || MODULES.iter().any(|(n, _)| *n == target),
                    "{name} imports {target}, which is not served"
                );
            }
        }
    }

    /// names.js holds the protos' names: the five states and the 17 codes by number.
    #[test]
    fn names_come_from_the_protos() {
        let js = names_js();
        assert!(js.contains(
            r#"export const STATES = ["QUEUED","RUNNING","SUCCEEDED","FAILED","CANCELLED"];"#
        ));
        assert!(js.contains(r#"export const CODE_NAMES = ["OK","CANCELLED","UNKNOWN","#));
        assert!(js.contains(r#""DATA_LOSS","UNAUTHENTICATED"];"#));
    }
}
